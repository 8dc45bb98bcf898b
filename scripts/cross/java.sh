#!/usr/bin/env bash
# Runs the Java 17 of PLATFORM's Debian 11 test root (glibc 2.31; linux-aarch64 under qemu-user)
# with the given arguments. The shell is replaced by the JVM (or the emulator running it), so a
# caller that kills this process on a timeout kills the JVM. The directories of the -cp entries
# are visible read-only at their own paths; the network (loopback) is the host's.
# Usage: scripts/cross/java.sh PLATFORM JAVA_ARGS...   (the roots come from scripts/setup.sh)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -ge 2 ] || die "usage: scripts/cross/java.sh PLATFORM JAVA_ARGS... (PLATFORM: linux-x86_64 or linux-aarch64)"
platform="$1"
shift
arch="$(debian_arch "$platform")" || exit 1

declare -A dirs=()
prev=""
for arg in "$@"; do
  if [ "$prev" = -cp ] || [ "$prev" = -classpath ] || [ "$prev" = --class-path ]; then
    IFS=: read -ra entries <<<"$arg"
    for entry in "${entries[@]}"; do
      [ -e "$entry" ] || die "class path entry $entry does not exist"
      [ -d "$entry" ] || entry="$(dirname "$entry")"
      dirs["$(realpath "$entry")"]=1
    done
  fi
  prev="$arg"
done
binds=()
# Sorted, so a directory is bound before any directory inside it.
while IFS= read -r dir; do
  [ -n "$dir" ] && binds+=(-r "$dir")
done < <(printf '%s\n' "${!dirs[@]}" | sort)

run_in_test_root "$platform" "${binds[@]}" -- "/usr/lib/jvm/java-17-openjdk-$arch/bin/java" "$@"
