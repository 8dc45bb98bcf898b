#!/usr/bin/env bash
# The Spark version matrix's venvs: one per pyspark[connect] version in $SPARK_MATRIX (the
# $PYSPARK_VERSION one is the repository's .venv, made by setup.sh itself). Each holds that
# pyspark (its jars/ and bin/spark-submit are the Spark server of that version; its Python
# package is the client) plus the same pinned test packages as tests/e2e/requirements.txt.
#
# They live in $MATRIX_DIR (see common.sh: /var/cache/... for root, else ~/.cache/...), outside the
# repository: about 1 GB each, shared by every clone and worktree, reused when present (a stamp
# records the requirements they were made from; a changed list rebuilds them). A lock per venv
# lets parallel runs share them safely. pyspark 4.3 needs Python >= 3.11: the interpreter is
# $KBASE_MATRIX_PYTHON, else the first of python3.11, python3.12, python3.13.
#
# Usage: scripts/setup-matrix.sh [VERSION...]     (default: $SPARK_MATRIX)
# Called by scripts/setup.sh --matrix (which scripts/test.sh uses).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [ $# -gt 0 ]; then versions=("$@"); else read -r -a versions <<< "$SPARK_MATRIX"; fi
[ ${#versions[@]} -gt 0 ] || { log "Spark matrix: no extra versions (KBASE_SPARK_MATRIX is empty)"; exit 0; }

req="$REPO_ROOT/tests/e2e/requirements.txt"
[ -f "$req" ] || die "missing $req"
grep -q '^pyspark\[connect\]==' "$req" || die "$req has no 'pyspark[connect]==' line to replace"
command -v flock >/dev/null 2>&1 || die "flock not found (util-linux)"

pick_python() {
  local c pv
  for c in ${KBASE_MATRIX_PYTHON:-} python3.11 python3.12 python3.13; do
    command -v "$c" >/dev/null 2>&1 || continue
    pv="$("$c" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" || continue
    case "$pv" in 3.11|3.12|3.13) printf '%s\n' "$c"; return 0 ;; esac
  done
  return 1
}

# The requirements of one matrix venv: tests/e2e/requirements.txt with its pyspark pin replaced.
requirements_for() { sed "s/^pyspark\[connect\]==.*/pyspark[connect]==$1/" "$req"; }

venv_ok() {  # VENV_DIR VERSION
  [ -x "$1/bin/python" ] || return 1
  "$1/bin/python" - <<PYEOF >/dev/null 2>&1
import glob, os, pyspark, grpc, pytest, pandas, pyarrow
assert pyspark.__version__ == "$2", pyspark.__version__
from pyspark.sql.connect.proto import base_pb2_grpc
home = os.path.dirname(pyspark.__file__)
assert os.access(os.path.join(home, "bin/spark-submit"), os.X_OK)
assert glob.glob(os.path.join(home, "jars/spark-connect_2.13-$2.jar"))
PYEOF
}

mkdir -p "$MATRIX_DIR"
t0=$(now_s)
for v in "${versions[@]}"; do
  [[ "$v" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "not a pyspark version: '$v'"
  dir="$(matrix_venv "$v")"
  log "Spark matrix: venv for pyspark[connect]==$v ($dir)"
  (
    flock -w 1800 9 || die "timed out waiting for the lock on $dir (another setup running?)"
    want="$(requirements_for "$v" | sha256sum | cut -d' ' -f1)"
    if venv_ok "$dir" "$v" && [ "$(cat "$dir/.kbase-requirements.sha256" 2>/dev/null)" = "$want" ]; then
      info "reusing it (requirements unchanged)"
      exit 0
    fi
    pybin="$(pick_python)" || die "no Python 3.11-3.13 found (pyspark 4.3 needs >= 3.11); set KBASE_MATRIX_PYTHON"
    rm -rf "$dir"
    info "creating it with $pybin; pip install (a minute or two on a cold cache, ~1 GB)"
    "$pybin" -m venv "$dir" || die "cannot create a venv with $pybin (apt-get install python3-venv?)"
    requirements_for "$v" > "$dir/requirements.txt"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check -r "$dir/requirements.txt" \
      || die "pip install of pyspark[connect]==$v and the test packages failed (is PyPI reachable? see $dir/requirements.txt)"
    venv_ok "$dir" "$v" || die "$dir lacks a working pyspark[connect]==$v after pip install"
    echo "$want" > "$dir/.kbase-requirements.sha256"
  ) 9> "$dir.lock"
done
log "Spark matrix venvs ready ($(( $(now_s) - t0 ))s): ${versions[*]}"
