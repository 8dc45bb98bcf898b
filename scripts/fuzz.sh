#!/usr/bin/env bash
# Long property-based fuzzing of token extraction, settings parsing and Auth2 answer parsing.
# Usage: scripts/fuzz.sh [CASES]   (default 200000 per target; bounded by a 20-minute timeout)
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-200000}"
echo "fuzz: $cases cases per target (release build)"
FUZZ_CASES="$cases" timeout 1200 cargo test --release --test fuzz -- --nocapture --test-threads=1 2>&1 \
  | grep -E 'fuzz [a-z_0-9]+: |test result|panicked|minimal failing input' -A3
