#!/usr/bin/env bash
# Creates the root file systems of scripts/cross/lib.sh when missing or incomplete, and reuses them
# otherwise (a second run takes a second). A root is built under NAME.partial and moved into place
# only once complete and checked, so an interrupted run leaves nothing that passes for done.
# Needs root (debootstrap, chroot, mount namespaces) and reaches the Debian mirror and PyPI: the
# mirror this machine's apt uses, or KBASE_DEBIAN_MIRROR (see debian_mirror in lib.sh), through
# apt's proxy if it has one. Which mirror made a root is not part of its recipe: a new mirror
# never rebuilds a complete root.
# Verbose output goes to $KBASE_CROSS_CACHE/logs/.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" -eq 0 ] || die "scripts/cross/setup.sh needs root (debootstrap, chroot and mount namespaces)"
[ "$(uname -m)" = x86_64 ] || die "the cross build and its test roots are made for x86_64 hosts; this is $(uname -m)"
command -v python3 >/dev/null 2>&1 || die "python3 with pip is needed to fetch zig and cargo-zigbuild from PyPI"

log "Checking the cross toolchain and test roots in $CROSS_CACHE"
t0=$(now_s)
did=()
cache_lock -x
mkdir -p "$CROSS_CACHE/logs"

if ! command -v debootstrap >/dev/null 2>&1; then
  info "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
  } || die "cannot install debootstrap (apt-get install debootstrap)"
  did+=("apt-get install debootstrap")
fi

# quietly LOG CMD...: runs CMD in a subshell with its output appended to LOG; on failure shows
# the end of LOG and stops.
quietly() {
  local logfile="$1"; shift
  if ! ( "$@" ) >>"$logfile" 2>&1; then
    tail -n 25 "$logfile" >&2
    die "failed: $* (full log: $logfile)"
  fi
}

# Deletes a tree, refusing while anything is mounted inside it (rm -rf would go into the mount).
remove_tree() {
  [ -e "$1" ] || return 0
  if awk -v p="$1/" 'index($5 "/", p) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    die "something is mounted under $1; unmount it before it can be recreated"
  fi
  rm -rf "$1"
}

# The Debian mirror, looked up once and only when a root has to be made.
DEBIAN_MIRROR=""
use_debian_mirror() {
  [ -z "$DEBIAN_MIRROR" ] || return 0
  local found where
  found="$(debian_mirror)" || die "no Debian mirror to make the roots from (see above): set KBASE_DEBIAN_MIRROR=URI"
  read -r DEBIAN_MIRROR where <<<"$found"
  apt_proxy_env
  info "Debian mirror: $DEBIAN_MIRROR (from $where; it must carry trixie and bullseye," \
    "KBASE_DEBIAN_MIRROR=URI chooses another)${http_proxy:+, through \$http_proxy}"
}

# make_root DIR RECIPE BUILDER [ARGS...]: unless DIR is complete for RECIPE, builds it with
# BUILDER DIR.partial ARGS..., stamps it and moves it into place.
make_root() {
  local dir="$1" recipe="$2"; shift 2
  if root_ready "$dir" "$recipe"; then
    info "reusing $dir"
    return 0
  fi
  use_debian_mirror
  local t=$(now_s) logfile="$CROSS_CACHE/logs/$(basename "$dir").log"
  info "creating $dir (a few minutes; log: $logfile)"
  : > "$logfile"
  remove_tree "$dir.partial"
  "$@" "$dir.partial" "$logfile"
  echo "$recipe" > "$dir.partial/.kbase-recipe"
  remove_tree "$dir"
  mv "$dir.partial" "$dir"
  did+=("created $dir in $(( $(now_s) - t ))s")
}

# Debian 13 with Rust 1.85 for amd64 and arm64, zig and cargo-zigbuild.
make_build_root() {
  local dir="$1" logfile="$2"
  quietly "$logfile" unshare --mount --propagation private -- \
    debootstrap --variant=minbase trixie "$dir" "$DEBIAN_MIRROR"
  quietly "$logfile" in_root "$dir" -r /etc/resolv.conf -- sh -euc '
    dpkg --add-architecture arm64
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      rustc cargo libstd-rust-dev:arm64 ca-certificates
    apt-get clean'
  # Static binaries from PyPI; cargo-zigbuild drives the root's cargo and finds zig on PATH.
  quietly "$logfile" python3 -m pip install -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --target "$dir/opt/zig" "ziglang==$ZIG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION"
  ln -s ../ziglang/zig "$dir/opt/zig/bin/zig"
  quietly "$logfile" in_root "$dir" -- sh -euc '
    PATH=/opt/zig/bin:$PATH
    cargo --version; rustc --version; zig version; cargo-zigbuild --version
    ls /usr/lib/rustlib/aarch64-unknown-linux-gnu/lib/libstd-*.rlib'
  info "$(grep -E '^(rustc|cargo|cargo-zigbuild) [0-9]' "$logfile" | tr '\n' ' ')zig $ZIG_VERSION"
}

# Debian 11 with Java 17 and CA certificates (the plugin's HTTPS client needs a trust store) for
# PLATFORM. The packages are unpacked (dpkg -x), never configured, so the same recipe works for a
# foreign architecture, whose maintainer scripts could not run here.
make_test_root() {
  local platform="$1" dir="$2" logfile="$3"
  local arch java
  arch="$(debian_arch "$platform")"
  java="/usr/lib/jvm/java-17-openjdk-$arch/bin/java"
  quietly "$logfile" unshare --mount --propagation private -- debootstrap --foreign --variant=minbase \
    --arch="$arch" --include=openjdk-17-jre-headless,ca-certificates bullseye "$dir" "$DEBIAN_MIRROR"
  local deb
  for deb in "$dir"/var/cache/apt/archives/*.deb; do
    quietly "$logfile" dpkg -x "$deb" "$dir"
  done
  rm -f "$dir"/var/cache/apt/archives/*.deb
  # What ca-certificates' maintainer script would have made.
  cat "$dir"/usr/share/ca-certificates/mozilla/*.crt > "$dir/etc/ssl/certs/ca-certificates.crt"
  local run=("$java")
  if [ "$arch" = arm64 ]; then
    # qemu-user from this machine's Debian, unpacked rather than installed, so that no binfmt
    # handler is registered: the test runs the emulator explicitly.
    local tmp
    tmp="$(mktemp -d)"
    if ! (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root qemu-user-static) >>"$logfile" 2>&1; then
      quietly "$logfile" apt-get update -q
      quietly "$logfile" sh -c "cd '$tmp' && apt-get download -q -o APT::Sandbox::User=root qemu-user-static"
    fi
    quietly "$logfile" dpkg -x "$tmp"/qemu-user-static_*.deb "$tmp/x"
    install -D -m 0755 "$tmp/x/usr/bin/qemu-aarch64-static" "$dir/usr/local/bin/qemu-aarch64-static"
    rm -rf "$tmp"
    run=(/usr/local/bin/qemu-aarch64-static "$java")
  fi
  quietly "$logfile" in_root "$dir" -- "${run[@]}" -version
  info "$(grep -m1 -E 'openjdk version' "$logfile"), glibc $(ls "$dir"/lib/*-linux-gnu/libc-*.so | sed 's/.*libc-\(.*\)\.so/\1/')"
}

make_root "$BUILD_ROOT" "$BUILD_RECIPE" make_build_root
for platform in linux-x86_64 linux-aarch64; do
  make_root "$(test_root "$platform")" "$TEST_RECIPE" make_test_root "$platform"
done

if [ ${#did[@]} -eq 0 ]; then
  info "all present ($(( $(now_s) - t0 ))s)"
else
  log "cross setup: done in $(( $(now_s) - t0 ))s:"
  for d in "${did[@]}"; do info "$d"; done
fi
