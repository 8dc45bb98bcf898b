#!/usr/bin/env bash
# Prepare this machine for building and testing (idempotent; quick when everything is present):
#   * Debian packages: gradle, junit4 (JVM tests), nginx + openssl (TLS proxy e2e test),
#     openjdk-17-jdk-headless when no Java 17 JDK is found;
#   * Java 17 and a Rust toolchain (cargo) are present;
#   * <repo>/.venv with pyspark[connect]==4.0.0, pytest and friends (tests/e2e/requirements.txt);
#   * the cross build and Debian 11 test roots, outside the repository (scripts/cross/setup.sh;
#     not with --host-only);
#   * with --matrix: the Spark version matrix's venvs (scripts/setup-matrix.sh).
# Without root it installs nothing system-wide: it checks, and for anything missing that only root
# can install it stops with the exact command to run as root; it implies --host-only (the cross
# roots need root), saying so.
# Usage: scripts/setup.sh [--matrix] [--host-only]   (env: KBASE_PYTHON=python3.x chooses the interpreter)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

matrix=0 host_only_asked=0
for arg in "$@"; do
  case "$arg" in
    --matrix) matrix=1 ;;
    --host-only) host_only_asked=1 ;;
    *) die "unknown option: $arg (usage: scripts/setup.sh [--matrix] [--host-only])" ;;
  esac
done
host_only="$(choose_host_only "$host_only_asked")"

t0=$(now_s)
did=()

# ---------------------------------------------------------------- Debian packages
log "Checking Debian packages"
if ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  warn "not a Debian/Ubuntu system: install gradle, junit4, nginx, openssl and a Java 17 JDK yourself"
else
  want=(gradle junit4 nginx openssl ca-certificates)
  detect_java_home
  if [ "$(java_major)" != "17" ] || [ ! -x "${JAVA_HOME:-/nonexistent}/bin/javac" ]; then
    want+=(openjdk-17-jdk-headless)
  fi
  missing=()
  for p in "${want[@]}"; do
    if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then
      missing+=("$p")
    fi
  done
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || root_needed "missing Debian packages: ${missing[*]}" \
      "apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
    info "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    did+=("apt-get install ${missing[*]}")
  else
    info "present: ${want[*]}"
  fi
fi

# ---------------------------------------------------------------- Java 17
log "Checking Java 17"
detect_java_home
[ -n "${JAVA_HOME:-}" ] || die "no JDK found (javac not on PATH); install openjdk-17-jdk-headless"
jm="$(java_major)"
[ "$jm" = "17" ] || die "JAVA_HOME=$JAVA_HOME is Java '$jm'; Spark 4.0 and this build need Java 17 (set JAVA_HOME)"
[ -x "$JAVA_HOME/bin/javac" ] || die "JAVA_HOME=$JAVA_HOME has no javac; install a JDK (openjdk-17-jdk-headless)"
info "JAVA_HOME=$JAVA_HOME (Java $jm)"

# ---------------------------------------------------------------- Rust
log "Checking Rust toolchain"
command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust (https://rustup.rs), then re-run"
info "$(cargo --version)"

# ---------------------------------------------------------------- Python venv
log "Checking Python venv $VENV"
req="$REPO_ROOT/tests/e2e/requirements.txt"
[ -f "$req" ] || die "missing $req"
stamp="$VENV/.kbase-requirements.sha256"
want_sum="$(sha256sum "$req" | cut -d' ' -f1)"
venv_ok() {
  [ -x "$PY" ] || return 1
  "$PY" - <<EOF >/dev/null 2>&1
import pyspark, grpc, pytest, pandas, pyarrow
assert pyspark.__version__ == "$PYSPARK_VERSION", pyspark.__version__
from pyspark.sql.connect.proto import base_pb2_grpc
EOF
}
if venv_ok && [ "$(cat "$stamp" 2>/dev/null)" = "$want_sum" ]; then
  info "reusing $VENV (pyspark $PYSPARK_VERSION, requirements unchanged)"
else
  pybin="${KBASE_PYTHON:-}"
  if [ -z "$pybin" ]; then
    for c in python3.11 python3.12 python3.10 python3.13 python3; do
      if command -v "$c" >/dev/null 2>&1; then pybin="$c"; break; fi
    done
  fi
  [ -n "$pybin" ] || die "no python3 found; install python3 (3.10-3.13) and python3-venv"
  pv="$("$pybin" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  case "$pv" in
    3.10|3.11|3.12|3.13) ;;
    *) die "$pybin is Python $pv; pyspark $PYSPARK_VERSION needs 3.9-3.13 (set KBASE_PYTHON)" ;;
  esac
  if [ ! -x "$PY" ]; then
    info "creating venv with $pybin (Python $pv)"
    if ! "$pybin" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      if command -v apt-get >/dev/null 2>&1; then
        [ "$(id -u)" -eq 0 ] || root_needed "$pybin cannot create a venv (Debian's python3-venv is missing)" \
          "apt-get update && apt-get install -y python3-venv"
        info "python venv module missing; installing python3-venv"
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
        did+=("apt-get install python3-venv")
      fi
      "$pybin" -m venv "$VENV" || die "cannot create a venv with $pybin"
    fi
    did+=("created $VENV")
  fi
  info "pip install -r tests/e2e/requirements.txt (about a minute on a cold cache)"
  "$PY" -m pip install -q --disable-pip-version-check -r "$req" \
    || die "pip install into $VENV failed (is PyPI reachable?)"
  venv_ok || die "$VENV still lacks a working pyspark[connect]==$PYSPARK_VERSION after pip install"
  echo "$want_sum" > "$stamp"
  did+=("pip install -r tests/e2e/requirements.txt")
fi
detect_spark_home
[ -n "${SPARK_HOME:-}" ] || die "pyspark in $VENV has no bin/spark-submit"
[ -f "$SPARK_HOME/jars/spark-connect_2.13-$PYSPARK_VERSION.jar" ] \
  || die "missing $SPARK_HOME/jars/spark-connect_2.13-$PYSPARK_VERSION.jar"
info "SPARK_HOME=$SPARK_HOME"

# ---------------------------------------------------------------- cross build and test roots
if [ "$host_only" -eq 1 ]; then
  log "Skipping the cross-build and Debian 11 test roots: --host-only builds this machine's library" \
    "with its own cargo, and those roots are made (debootstrap, chroot) and used only as root"
else
  "$REPO_ROOT/scripts/cross/setup.sh"
fi

# ---------------------------------------------------------------- Spark version matrix (--matrix)
if [ $matrix -eq 1 ] && [ -n "$SPARK_MATRIX" ]; then
  "$REPO_ROOT/scripts/setup-matrix.sh"
fi

# ---------------------------------------------------------------- summary
if [ ${#did[@]} -eq 0 ]; then
  log "setup: everything already present ($(( $(now_s) - t0 ))s)"
else
  log "setup: done in $(( $(now_s) - t0 ))s:"
  for d in "${did[@]}"; do info "$d"; done
fi
