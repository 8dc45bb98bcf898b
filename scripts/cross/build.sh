#!/usr/bin/env bash
# Builds the shipped library for each PLATFORM in the trixie build root (Rust 1.85), linked by zig
# against glibc GLIBC, and puts it at OUTDIR/PLATFORM/libkbase_spark_auth.so. gradle's cargoBuild
# calls it; the root comes from scripts/setup.sh. Cargo's output stays in <target>/cross.
# Usage: scripts/cross/build.sh GLIBC OUTDIR PLATFORM...
#   e.g. scripts/cross/build.sh 2.28 build/native linux-x86_64 linux-aarch64
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -ge 3 ] || die "usage: scripts/cross/build.sh GLIBC OUTDIR PLATFORM... (e.g. 2.28 build/native linux-x86_64)"
glibc="$1" out="$(realpath -m "$2")"
shift 2
[ "$(id -u)" -eq 0 ] || die "scripts/cross/build.sh needs root: it builds in a chroot"
cache_lock -s
require_root "$BUILD_ROOT" "$BUILD_RECIPE"

target_dir="$(realpath -m "${CARGO_TARGET_DIR:-$REPO_ROOT/target}")/cross"
mkdir -p "$target_dir"
binds=(-b "$REPO_ROOT" -b "$target_dir" -r /etc/resolv.conf -r /etc/ssl/certs/ca-certificates.crt)
targets=()
for platform in "$@"; do
  targets+=(--target "$(rust_target "$platform").$glibc")
done

log "cargo-zigbuild ${targets[*]} (Rust 1.85 in $BUILD_ROOT)"
t0=$(now_s)
output="$(mktemp)"
trap 'rm -f "$output"' EXIT
# env -i: none of the caller's cargo or rustc settings reach the root's toolchain.
if ! ( in_root "$BUILD_ROOT" "${binds[@]}" -- env -i -C "$REPO_ROOT" HOME=/root PATH=/opt/zig/bin:/usr/bin:/bin \
      CARGO_TARGET_DIR="$target_dir" CARGO_TERM_COLOR=never \
      cargo-zigbuild zigbuild --release --lib --locked "${targets[@]}" ) 2>&1 | tee "$output"; then
  if grep -q 'requires rustc' "$output"; then
    warn "Cargo.lock holds a crate that needs a newer Rust than 1.85 (our rust-version): on the host," \
      "'cargo update -p NAME' picks the newest version that supports 1.85 (the workspace uses resolver 3)"
  elif grep -q -- '--locked' "$output"; then
    warn "Cargo.lock does not match Cargo.toml: update it on the host first (e.g. cargo build), then commit it"
  fi
  die "cross build failed (${targets[*]})"
fi

rm -rf "$out"
for platform in "$@"; do
  install -D -m 0644 "$target_dir/$(rust_target "$platform")/release/$LIBRARY_FILE" "$out/$platform/$LIBRARY_FILE"
done
info "built $* in $(( $(now_s) - t0 ))s: $out"
