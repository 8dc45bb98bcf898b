# shellcheck shell=bash
# Shared helpers for scripts/*.sh. Source it; it does not change the caller's options.
#
# Sets (without overriding what the caller already exported):
#   REPO_ROOT   repository root
#   VENV        $REPO_ROOT/.venv (override with KBASE_VENV)
#   PY          $VENV/bin/python
#   JAVA_HOME   a Java 17 installation (derived from `javac` on PATH when unset)
#   SPARK_HOME  the Spark distribution inside the venv's pyspark package (when the venv exists)
#   SPARK_MATRIX, MATRIX_DIR, matrix_venv VERSION   the Spark version matrix (see below)

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KBASE_VENV:-$REPO_ROOT/.venv}"
PY="$VENV/bin/python"
JAR_GLOB="$REPO_ROOT/build/libs/kbase-spark-auth-*.jar"
PYSPARK_VERSION="4.0.0"

# Spark version matrix: the same jar (compiled against $PYSPARK_VERSION) also runs the e2e
# suite's `matrix` subset against these pyspark[connect] versions, one venv each (server = that
# venv's jars and spark-submit, client = that venv's pyspark). KBASE_SPARK_MATRIX overrides the
# list ("" = none). The venvs (~0.9 GB each) live outside the repository, shared by every clone
# and worktree: $KBASE_MATRIX_DIR, default /var/cache/kbase-spark-auth/matrix for root (whose
# HOME is private, while the hardened-pod test runs Spark from them as an unprivileged user) and
# ~/.cache/kbase-spark-auth/matrix for anyone else.
SPARK_MATRIX="${KBASE_SPARK_MATRIX-4.1.4 4.2.1 4.3.0}"
if [ -n "${KBASE_MATRIX_DIR:-}" ]; then
  MATRIX_DIR="$KBASE_MATRIX_DIR"
elif [ "$(id -u)" -eq 0 ]; then
  MATRIX_DIR="/var/cache/kbase-spark-auth/matrix"
else
  MATRIX_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/kbase-spark-auth/matrix"
fi
matrix_venv() { printf '%s/venv-pyspark-%s\n' "$MATRIX_DIR" "$1"; }

# Cargo installed by rustup is often only on PATH in login shells.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  PATH="$HOME/.cargo/bin:$PATH"
  export PATH
fi

if [ -t 2 ]; then
  _c_blue=$'\033[1;34m' _c_yellow=$'\033[1;33m' _c_red=$'\033[1;31m' _c_off=$'\033[0m'
else
  _c_blue='' _c_yellow='' _c_red='' _c_off=''
fi
log()  { printf '%s==>%s %s\n' "$_c_blue" "$_c_off" "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
warn() { printf '%sWARN:%s %s\n' "$_c_yellow" "$_c_off" "$*" >&2; }
die()  { printf '%sERROR:%s %s\n' "$_c_red" "$_c_off" "$*" >&2; exit 1; }

# choose_host_only ASKED: prints 1 when this run builds the library for this machine only, with its own
# cargo (--host-only, gradle -Pplatforms=host): when asked (ASKED=1), and always without root, as
# the shipped two-platform build runs in a chroot (saying so); else 0.
choose_host_only() {
  if [ "$1" -eq 1 ]; then
    echo 1
  elif [ "$(id -u)" -ne 0 ]; then
    log "not root (uid $(id -u)), so --host-only: this machine's library only, built by its own cargo" \
      "(gradle -Pplatforms=host); the shipped two-platform build (linux-x86_64 + linux-aarch64," \
      "glibc 2.28) runs in a chroot, which needs root. Tests that need root are skipped, each with its reason."
    echo 1
  else
    echo 0
  fi
}

# root_needed WHAT COMMAND: stops a run without root, naming what is missing and the exact command
# root must run (the scripts never call sudo or apt-get for a non-root user).
root_needed() {
  die "$1; as root, run: $2   (then run this again)"
}

# JAVA_HOME: kept when it is a Java 17 JDK; else the JDK of `javac` on PATH when that is 17;
# else Debian's /usr/lib/jvm/java-17-openjdk-*; else whatever `javac` on PATH is (setup.sh
# then reports the wrong version).
_jdk_major() { "$1/bin/java" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1; }
detect_java_home() {
  local cand javac from_path=""
  javac="$(command -v javac 2>/dev/null || true)"
  [ -n "$javac" ] && from_path="$(dirname "$(dirname "$(readlink -f "$javac")")")"
  for cand in "${JAVA_HOME:-}" "$from_path" /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-17-openjdk-arm64; do
    if [ -n "$cand" ] && [ -x "$cand/bin/javac" ] && [ "$(_jdk_major "$cand")" = "17" ]; then
      JAVA_HOME="$cand"; export JAVA_HOME
      return 0
    fi
  done
  if [ -z "${JAVA_HOME:-}" ] && [ -n "$from_path" ]; then
    JAVA_HOME="$from_path"; export JAVA_HOME
  fi
}

# Major version of $JAVA_HOME/bin/java (e.g. 17), empty when unknown.
java_major() {
  [ -x "${JAVA_HOME:-}/bin/java" ] || return 0
  _jdk_major "$JAVA_HOME"
}

# SPARK_HOME from the venv's pyspark package (it ships bin/spark-submit and jars/).
detect_spark_home() {
  if [ -n "${SPARK_HOME:-}" ] && [ -x "$SPARK_HOME/bin/spark-submit" ]; then
    return 0
  fi
  if [ -x "$PY" ]; then
    local d
    d="$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))' 2>/dev/null || true)"
    if [ -n "$d" ] && [ -x "$d/bin/spark-submit" ]; then
      SPARK_HOME="$d"
      export SPARK_HOME
    fi
  fi
}

# The plugin jar built by gradle (not -sources/-javadoc), empty when absent.
find_jar() {
  local j
  for j in $JAR_GLOB; do
    case "$j" in
      *-sources.jar|*-javadoc.jar|*-tests.jar) continue ;;
    esac
    [ -f "$j" ] && { printf '%s\n' "$j"; return 0; }
  done
  return 0
}

# The KBase-Native-Platforms attribute of a jar's manifest (which libraries it carries, e.g.
# "linux-x86_64 (glibc >= 2.28), linux-aarch64 (glibc >= 2.28)"; build.gradle writes it).
jar_platforms() {
  python3 - "$1" <<'EOF'
import sys, zipfile
manifest = zipfile.ZipFile(sys.argv[1]).read("META-INF/MANIFEST.MF").decode()
lines = manifest.replace("\r\n", "\n").replace("\n ", "").splitlines()  # unfold 72-byte lines
print(next((l.split(": ", 1)[1] for l in lines if l.startswith("KBase-Native-Platforms: ")),
           "unknown (no KBase-Native-Platforms in its manifest)"))
EOF
}

# Seconds since the epoch, for step timings.
now_s() { date +%s; }
