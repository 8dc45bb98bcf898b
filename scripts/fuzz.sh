#!/usr/bin/env bash
# Fuzzing of everything that parses outside input: token extraction, settings parsing and Auth2
# answer parsing. Not part of scripts/test.sh (which runs the quick proptest form in `cargo test`).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]      coverage-guided (cargo-fuzz / libFuzzer),
#                                                   SECONDS per target (default 60), targets
#                                                   token_extract settings auth2_answer (default all)
#        scripts/fuzz.sh --proptest [CASES]         the proptest targets, CASES each (default 200000)
#
# cargo-fuzz comes from crates.io (installed on first use); it needs nightly flags, which the
# stable toolchain accepts with RUSTC_BOOTSTRAP=1; libFuzzer is built with the machine's C++
# compiler. Runs niced, each target bounded in time. The committed seeds (fuzz/seeds/TARGET) start
# a working corpus under fuzz/corpus/ (git-ignored). Prints executions and coverage per target;
# anything found is left in fuzz/artifacts/TARGET/ and fails the run: turn it into a regression
# case in tests/fuzz.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--proptest" ]; then
  cases="${2:-200000}"
  echo "fuzz (proptest): $cases cases per target (release build)"
  FUZZ_CASES="$cases" timeout 1200 nice -n 10 cargo test --release --test fuzz -- --nocapture --test-threads=1 2>&1 \
    | grep -E 'fuzz [a-z_0-9]+: |test result|panicked|minimal failing input' -A3
  exit "${PIPESTATUS[0]}"
fi

secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(token_extract settings auth2_answer)
case "$secs" in ''|*[!0-9]*) echo "fuzz.sh: SECONDS must be a number, got '$secs'" >&2; exit 2 ;; esac

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz from crates.io (once)"
  nice -n 10 cargo install cargo-fuzz --locked
fi

# No sanitizer: the code under test is safe Rust (no unsafe in the parsers); coverage guidance
# (SanitizerCoverage) stays on. Release build with debug assertions (cargo-fuzz's default).
fuzz_args=(--sanitizer none)
echo "fuzz: building the targets (release, instrumented for coverage)"
nice -n 10 cargo fuzz build "${fuzz_args[@]}"

summary=()
status=0
for t in "${targets[@]}"; do
  corpus="fuzz/corpus/$t"
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  cp -n fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
  log="fuzz/artifacts/$t/last-run.log"
  echo "fuzz: $t for ${secs}s (corpus $(ls "$corpus" | wc -l) files; log $log)"
  set +e
  timeout $((secs + 600)) nice -n 10 cargo fuzz run "${fuzz_args[@]}" "$t" "$corpus" -- \
    -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
  done_line=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' <<<"$done_line" | grep -oE '[0-9]+' || true)
  ft=$(grep -oE 'ft: [0-9]+' <<<"$done_line" | grep -oE '[0-9]+' || true)
  rate=$(grep -oE 'exec/s: [0-9]+' <<<"$done_line" | grep -oE '[0-9]+' || true)
  found=$(ls "fuzz/artifacts/$t" | grep -vc '^last-run.log$' || true)
  line="$t: ${execs:-?} executions in ${secs}s (${rate:-?} exec/s), coverage cov=${cov:-?} ft=${ft:-?}, corpus $(ls "$corpus" | wc -l) files, findings ${found}"
  if [ $rc -ne 0 ] || [ "$found" != "0" ]; then
    line="$line  <-- FAILED (exit $rc): see $log and fuzz/artifacts/$t/"
    grep -E 'panicked|invariant broken|ERROR: libFuzzer' "$log" | head -5 || true
    status=1
  fi
  summary+=("$line")
done
echo "fuzz summary:"
printf '  %s\n' "${summary[@]}"
exit $status
