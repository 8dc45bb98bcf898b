# shellcheck shell=bash
# Shared by scripts/cross/*.sh. The jar ships the library for linux-x86_64 and linux-aarch64, both
# linked against glibc 2.28, built and tested on this x86_64 machine in Debian root file systems
# that live outside the repository (created by scripts/cross/setup.sh as root, reused afterwards;
# a host build, gradle -Pplatforms=host, needs none of them):
#
#   $CROSS_CACHE/trixie-build     Debian 13: rustc/cargo 1.85 (our rust-version) with the aarch64
#                                 standard library (libstd-rust-dev:arm64), plus zig and
#                                 cargo-zigbuild from PyPI, which link against a pinned glibc.
#   $CROSS_CACHE/bullseye-amd64   Debian 11 (glibc 2.31) with Java 17: the x86_64 smoke test.
#   $CROSS_CACHE/bullseye-arm64   the same for arm64, run under qemu-user (no binfmt handler).
#
# Why Debian roots: rustup cannot fetch another target's standard library here, Debian packages it.
# Why zig: Debian's cross gcc links against the root's own, too new, glibc; zig carries stubs for
# any glibc version. Why Debian 11: the oldest Debian with Java 17, older than any image users run.
# The roots come from the Debian mirror this machine's apt uses (debian_mirror below).
. "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

CROSS_CACHE="${KBASE_CROSS_CACHE:-/var/cache/kbase-spark-auth}"
ZIG_VERSION=0.15.2
ZIGBUILD_VERSION=0.24.0
BUILD_ROOT="$CROSS_CACHE/trixie-build"
# A root is complete when its .kbase-recipe holds its recipe; a changed recipe rebuilds it.
BUILD_RECIPE="trixie amd64 minbase, rustc cargo libstd-rust-dev:arm64, ziglang==$ZIG_VERSION cargo-zigbuild==$ZIGBUILD_VERSION"
TEST_RECIPE="bullseye minbase openjdk-17-jre-headless ca-certificates (dpkg -x), qemu-aarch64-static on arm64"

# What build.sh builds, by name: the cargo arguments that select it and the file cargo writes into
# <target>/<rust target>/release/. Each artifact is its own cargo run, so that features do not
# unify across them: the gateway links the core without the plugin's `jni` feature.
artifact_cargo_args() {
  case "$1" in
    plugin) echo "-p kbase-spark-auth --lib" ;;
    gateway) echo "-p kbase-spark-gateway --bin kbase-spark-gateway" ;;
    *) die "unknown artifact '$1' (known: plugin, gateway)" ;;
  esac
}
artifact_file() {
  case "$1" in
    plugin) echo libkbase_spark_auth.so ;;
    gateway) echo kbase-spark-gateway ;;
    *) die "unknown artifact '$1' (known: plugin, gateway)" ;;
  esac
}
# The file's mode in OUTDIR: the library goes into the jar, the gateway is run as it is.
artifact_mode() {
  case "$1" in
    plugin) echo 0644 ;;
    gateway) echo 0755 ;;
    *) die "unknown artifact '$1' (known: plugin, gateway)" ;;
  esac
}

# The jar's platform names (NativeAuth's resource directories) in Rust's and Debian's words.
rust_target() {
  case "$1" in
    linux-x86_64) echo x86_64-unknown-linux-gnu ;;
    linux-aarch64) echo aarch64-unknown-linux-gnu ;;
    *) die "unknown platform '$1' (known: linux-x86_64, linux-aarch64)" ;;
  esac
}
debian_arch() {
  case "$1" in
    linux-x86_64) echo amd64 ;;
    linux-aarch64) echo arm64 ;;
    *) die "unknown platform '$1' (known: linux-x86_64, linux-aarch64)" ;;
  esac
}
# This machine's platform in the jar's words (a host build makes only that one).
host_platform() {
  case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) echo linux-x86_64 ;;
    Linux-aarch64) echo linux-aarch64 ;;
    *) die "no platform of the jar is this machine ($(uname -s) $(uname -m)); known: linux-x86_64, linux-aarch64" ;;
  esac
}
test_root() { echo "$CROSS_CACHE/bullseye-$(debian_arch "$1")"; }

# debian_mirror: prints "URI WHERE", the Debian mirror the roots are made from: KBASE_DEBIAN_MIRROR,
# else the Debian archive among the sources this machine's apt uses (debian_mirror.py). Fails,
# saying what to set, when there is none. Only creating a root needs it.
debian_mirror() {
  if [ -n "${KBASE_DEBIAN_MIRROR:-}" ]; then
    echo "$KBASE_DEBIAN_MIRROR KBASE_DEBIAN_MIRROR"
    return 0
  fi
  python3 "$(dirname "${BASH_SOURCE[0]}")/debian_mirror.py"
}

# apt_proxy_env: exports http_proxy/https_proxy from apt's Acquire::http(s)::Proxy when apt has one
# and the environment does not, so debootstrap and the roots' apt go through the same proxy.
apt_proxy_env() {
  command -v apt-config >/dev/null 2>&1 || return 0
  local HTTP="" HTTPS=""
  eval "$(apt-config shell HTTP Acquire::http::Proxy HTTPS Acquire::https::Proxy)"
  case "$HTTP" in ""|DIRECT|false) ;; *) : "${http_proxy:=$HTTP}"; export http_proxy ;; esac
  case "$HTTPS" in ""|DIRECT|false) ;; *) : "${https_proxy:=$HTTPS}"; export https_proxy ;; esac
}

# run_in_test_root PLATFORM [-r HOST_PATH]... -- PROGRAM ARGS...: replaces the shell with PROGRAM (a
# path inside the root) run in PLATFORM's Debian 11 test root, under qemu-user when PLATFORM is not
# this machine's (no binfmt handler is registered), with each HOST_PATH visible read-only at its own
# path; the network (loopback) is the host's. The process keeps this shell's PID (exec all the way),
# so a caller's signal reaches PROGRAM (qemu-user passes it on). Holds the roots' shared lock.
run_in_test_root() {
  local platform="$1" root arch; shift
  root="$(test_root "$platform")" && arch="$(debian_arch "$platform")" || exit 1
  local binds=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    [ "$1" = -r ] || die "run_in_test_root: unexpected argument '$1'"
    binds+=(-r "$2"); shift 2
  done
  [ "${1:-}" = "--" ] || die "run_in_test_root: missing -- before the program"
  shift
  [ "$(id -u)" -eq 0 ] || die "running in the Debian 11 test root needs root (chroot, mount namespace)"
  cache_lock -s
  require_root "$root" "$TEST_RECIPE"
  local run=()
  if [ "$arch" = arm64 ] && [ "$(uname -m)" != aarch64 ]; then
    run=(/usr/local/bin/qemu-aarch64-static)
  fi
  in_root "$root" "${binds[@]}" -- "${run[@]}" "$@"
}

root_ready() { [ "$(cat "$1/.kbase-recipe" 2>/dev/null)" = "$2" ]; }

# require_root DIR RECIPE: fails, saying how to fix it, unless DIR is a complete root.
require_root() {
  root_ready "$1" "$2" || die "$1 is missing or incomplete: run scripts/setup.sh (or scripts/cross/setup.sh) to create it"
}

# Serialises setup (exclusive) against builds and tests (shared) across worktrees.
cache_lock() {
  mkdir -p "$CROSS_CACHE"
  exec 9>"$CROSS_CACHE/.lock"
  flock "$1" 9
}

# in_root ROOT [-b HOST_PATH]... [-r HOST_PATH]... -- CMD...
# Replaces the shell with CMD chrooted into ROOT, inside a private mount namespace holding /proc,
# /dev, a fresh /tmp, and each HOST_PATH bound at the same path (-b read-write, -r read-only).
# The mounts exist only in that namespace: they vanish when CMD ends, however it ends.
in_root() {
  local root="$1"; shift
  local binds=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    case "$1" in
      -b|-r) [[ "$2" == /* ]] || die "in_root: $2 is not an absolute path"; binds+=("$1" "$2"); shift 2 ;;
      *) die "in_root: unexpected argument '$1'" ;;
    esac
  done
  [ "${1:-}" = "--" ] || die "in_root: missing -- before the command"
  shift
  # shellcheck disable=SC2016
  exec unshare --mount --propagation private -- bash -euc '
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
    while [ "$1" != "--" ]; do
      mode=$1 src=$2 dst=$root$2; shift 2
      if [ -d "$src" ]; then
        mkdir -p "$dst"
      else
        mkdir -p "$(dirname "$dst")"; [ -e "$dst" ] || : > "$dst"
      fi
      mount --bind "$src" "$dst"
      [ "$mode" = -b ] || mount -o remount,bind,ro "$dst"
    done
    shift
    exec chroot "$root" "$@"' in_root "$root" "${binds[@]}" -- "$@"
}
