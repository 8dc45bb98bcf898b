#!/usr/bin/env bash
# Runs a program built for PLATFORM (e.g. build/gateway/linux-aarch64/kbase-spark-gateway) in that
# platform's Debian 11 test root (glibc 2.31; linux-aarch64 under qemu-user), with the given
# arguments. Its directory is visible read-only at its own path; the network (loopback) is the
# host's. The shell is replaced by the program (or the emulator running it): a caller's SIGTERM
# or kill reaches it.
# Usage: scripts/cross/run.sh PLATFORM PROGRAM [ARGS...]   (the roots come from scripts/setup.sh)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -ge 2 ] || die "usage: scripts/cross/run.sh PLATFORM PROGRAM [ARGS...] (PLATFORM: linux-x86_64 or linux-aarch64)"
platform="$1" program="$2"
shift 2
[ -f "$program" ] && [ -x "$program" ] || die "$program is not an executable file"
program="$(realpath "$program")"
run_in_test_root "$platform" -r "$(dirname "$program")" -- "$program" "$@"
