#!/usr/bin/env bash
# Builds an artifact (default: the plugin's library; or the gateway binary; see artifact_* in
# lib.sh) for each PLATFORM and puts it at OUTDIR/PLATFORM/<file>. gradle's cargoBuild (plugin)
# and gatewayBuild (gateway) call it.
#   GLIBC (e.g. 2.28): the shipped build, in the trixie build root (Rust 1.85), linked by zig
#         against that glibc; needs root and the root from scripts/setup.sh. Cargo's output stays
#         in <target>/cross.
#   host: this machine's platform only, with its own cargo (no root, no build root); the result
#         needs this machine's glibc or newer (gradle's checkGlibc reports which).
# Usage: scripts/cross/build.sh [--artifact NAME] GLIBC|host OUTDIR PLATFORM...
#   e.g. scripts/cross/build.sh 2.28 build/native linux-x86_64 linux-aarch64
#        scripts/cross/build.sh --artifact gateway 2.28 build/gateway linux-x86_64 linux-aarch64
#        scripts/cross/build.sh host build/native linux-x86_64
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

artifact=plugin
if [ "${1:-}" = --artifact ]; then
  artifact="${2:?--artifact needs a name}"
  shift 2
fi
[ $# -ge 3 ] || die "usage: scripts/cross/build.sh [--artifact NAME] GLIBC|host OUTDIR PLATFORM... (e.g. 2.28 build/native linux-x86_64)"
glibc="$1" out="$(realpath -m "$2")"
shift 2
args="$(artifact_cargo_args "$artifact")" && file="$(artifact_file "$artifact")" && mode="$(artifact_mode "$artifact")" || exit 1
read -ra selection <<<"$args"
t0=$(now_s)

if [ "$glibc" = host ]; then
  host="$(host_platform)" || exit 1
  for platform in "$@"; do
    [ "$platform" = "$host" ] || die "a host build makes $host only (this machine), not $platform"
  done
  cd "$REPO_ROOT"
  cargo="${KBASE_CARGO:-cargo}"
  command -v "$cargo" >/dev/null 2>&1 || die "cargo not found; install Rust (https://rustup.rs)"
  log "$cargo build --release --locked ${selection[*]} (this machine's Rust: $("$cargo" --version))"
  "$cargo" build --release --locked "${selection[@]}" || die "host build failed (${selection[*]})"
  rm -rf "$out"
  install -D -m "$mode" "$(realpath -m "${CARGO_TARGET_DIR:-$REPO_ROOT/target}")/release/$file" "$out/$host/$file"
  info "built $file for $host in $(( $(now_s) - t0 ))s: $out"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "scripts/cross/build.sh needs root: it builds in a chroot (without root, build for this machine only: gradle -Pplatforms=host)"
cache_lock -s
require_root "$BUILD_ROOT" "$BUILD_RECIPE"

target_dir="$(realpath -m "${CARGO_TARGET_DIR:-$REPO_ROOT/target}")/cross"
mkdir -p "$target_dir"
binds=(-b "$REPO_ROOT" -b "$target_dir" -r /etc/resolv.conf -r /etc/ssl/certs/ca-certificates.crt)
targets=()
for platform in "$@"; do
  targets+=(--target "$(rust_target "$platform").$glibc")
done

log "cargo-zigbuild ${selection[*]} ${targets[*]} (Rust 1.85 in $BUILD_ROOT)"
output="$(mktemp)"
trap 'rm -f "$output"' EXIT
# env -i: none of the caller's cargo or rustc settings reach the root's toolchain.
if ! ( in_root "$BUILD_ROOT" "${binds[@]}" -- env -i -C "$REPO_ROOT" HOME=/root PATH=/opt/zig/bin:/usr/bin:/bin \
      CARGO_TARGET_DIR="$target_dir" CARGO_TERM_COLOR=never \
      cargo-zigbuild zigbuild --release --locked "${selection[@]}" "${targets[@]}" ) 2>&1 | tee "$output"; then
  if grep -q 'requires rustc' "$output"; then
    warn "Cargo.lock holds a crate that needs a newer Rust than 1.85 (our rust-version): on the host," \
      "'cargo update -p NAME' picks the newest version that supports 1.85 (the workspace uses resolver 3)"
  elif grep -q -- '--locked' "$output"; then
    warn "Cargo.lock does not match Cargo.toml: update it on the host first (e.g. cargo build), then commit it"
  fi
  die "cross build failed (${selection[*]} ${targets[*]})"
fi

rm -rf "$out"
for platform in "$@"; do
  install -D -m "$mode" "$target_dir/$(rust_target "$platform")/release/$file" "$out/$platform/$file"
done
info "built $file for $* in $(( $(now_s) - t0 ))s: $out"
