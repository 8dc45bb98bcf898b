#!/usr/bin/env bash
# The project's test command. Steps, each failing fast with a clear message:
#   1. scripts/setup.sh --matrix             (Debian packages, Java 17, cargo, .venv, matrix venvs)
#   2. cargo test --workspace                (Rust unit + integration + doc tests)
#   3. cargo build --release -p fake-auth2   (started by e2e tests)
#   4. gradle build                          (jar with the .so, the gateway binaries, JUnit tests,
#                                             smoke tests; e2e runs this machine's gateway binary
#                                             from it), then pytest tests/scripts (the build
#                                             scripts' logic; docker/ against the built gateway)
#   5. pytest tests/e2e                      (real Spark Connect 4.0.0 + pyspark + nginx TLS + gateway)
#   6. pytest -m matrix tests/e2e, once per Spark version of the matrix (default 4.1.4 4.2.1
#      4.3.0; KBASE_SPARK_MATRIX="4.3.0" chooses): the same jar, that version's server and client
# The end-to-end runs (5, 6) all run even when one fails; the command fails if any did.
# Run as root it builds and tests the shipped jar and gateway (linux-x86_64 and linux-aarch64
# against glibc 2.28, in a chroot); otherwise it chooses --host-only, saying so.
#
# Usage: scripts/test.sh [--quick] [--slow] [--e2e-only] [--no-matrix|--matrix-only] [--host-only]
#                        [-- PYTEST_ARGS...]
#   --quick        stop after step 4 (no end-to-end tests)
#   --slow         also run the soaks (Rust, JVM, e2e) and the e2e latency benchmark
#                  (excluded by default: about 10 more minutes)
#   --e2e-only     skip steps 2 and 4 except for building the jar and (by cargo) the gateway
#   --no-matrix    skip step 6 (Spark 4.0.0 only)
#   --matrix-only  skip step 5 (only the matrix versions)
#   --host-only    this machine's library and gateway only, built by its own cargo (gradle
#                  -Pplatforms=host), no cross-build roots; the default without root. Tests that
#                  need root (the Debian 11 and qemu smoke tests, the hardened-pod and noexec
#                  tests, the loader tests that mount or chown) are skipped, each naming its reason
#   -- ARGS        extra arguments for every pytest run, e.g. -- -k tls -x
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

quick=0 slow=0 e2e_only=0 base=1 matrix=1 host_only_asked=0
pytest_extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --slow) slow=1 ;;
    --e2e-only) e2e_only=1 ;;
    --no-matrix) matrix=0 ;;
    --matrix-only) base=0 ;;
    --host-only) host_only_asked=1 ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; pytest_extra=("$@"); break ;;
    *) die "unknown option: $1 (see scripts/test.sh --help)" ;;
  esac
  shift
done
[ $quick -eq 1 ] && [ $e2e_only -eq 1 ] && die "--quick and --e2e-only exclude each other"
[ $base -eq 0 ] && [ $matrix -eq 0 ] && die "--no-matrix and --matrix-only exclude each other"
[ -n "$SPARK_MATRIX" ] || matrix=0
[ $quick -eq 1 ] && matrix=0
host_only="$(choose_host_only "$host_only_asked")"

cd "$REPO_ROOT"
t_start=$(now_s)
summary=()

# step NAME CMD...: runs CMD, records its duration, stops the whole run on failure.
step() {
  local name="$1"; shift
  local t0 rc
  t0=$(now_s)
  log "[$name] $*"
  set +e
  "$@"
  rc=$?
  set -e
  local dt=$(( $(now_s) - t0 ))
  if [ $rc -ne 0 ]; then
    summary+=("FAILED  ${name} (${dt}s, exit ${rc})")
    printf '%s\n' "${summary[@]}" >&2
    die "step '${name}' failed with exit code ${rc}: see its output above (command: $*)"
  fi
  summary+=("ok      ${name} (${dt}s)")
}

setup_args=()
[ $matrix -eq 1 ] && setup_args+=(--matrix)
[ "$host_only" -eq 1 ] && setup_args+=(--host-only)
step setup "$REPO_ROOT/scripts/setup.sh" "${setup_args[@]}"
detect_java_home
detect_spark_home
export JAVA_HOME SPARK_HOME
[ -n "${SPARK_HOME:-}" ] || die "SPARK_HOME not found in $VENV after setup"

fake_bin="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/fake-auth2"
gradle_args=(--offline --no-daemon -PsparkJars="$SPARK_HOME/jars" -PfakeAuth2Bin="$fake_bin")
[ "$host_only" -eq 1 ] && gradle_args+=(-Pplatforms=host)

if [ $e2e_only -eq 0 ]; then
  step "cargo test" cargo test --workspace
fi
step "fake-auth2 (release)" cargo build --release -p fake-auth2 --bin fake-auth2
if [ $e2e_only -eq 0 ]; then
  step "gradle build" gradle "${gradle_args[@]}" build
  step "script tests" "$PY" -m pytest "$REPO_ROOT/tests/scripts" -v
  # The e2e suite runs the gateway binary the build ships for this machine (no second build).
  gateway_bin="$REPO_ROOT/build/gateway/linux-$(uname -m)/kbase-spark-gateway"
else
  step "gradle jar" gradle "${gradle_args[@]}" jar
  gateway_bin="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/kbase-spark-gateway"
  step "gateway (release)" cargo build --release -p kbase-spark-gateway --bin kbase-spark-gateway
fi
[ -x "$gateway_bin" ] || die "no gateway binary at $gateway_bin after the build"
jar="$(find_jar)"
[ -n "$jar" ] || die "gradle finished but no build/libs/kbase-spark-auth-*.jar exists"
platforms="$(jar_platforms "$jar")"
info "jar: $jar ($(du -h "$jar" | cut -f1)), native libraries: $platforms"
[ "$host_only" -eq 1 ] && summary+=("note    --host-only: the jar carries $platforms; root-only tests skipped (reasons above)")

if [ $slow -eq 1 ] && [ $e2e_only -eq 0 ]; then
  step "soak (Rust core)" cargo test --release --test soak -- --ignored --nocapture
  step "soak (JVM)" gradle "${gradle_args[@]}" soak
fi

if [ $quick -eq 1 ]; then
  log "--quick: skipping the end-to-end tests"
else
  base_markers="not soak and not bench" matrix_markers="matrix and not soak and not bench"
  [ $slow -eq 1 ] && base_markers="" matrix_markers="matrix"  # pytest -m "": every test
  e2e_failed=()
  # e2e_run LABEL VENV VERSION MARKERS: one pytest run with that venv's pyspark as server and
  # client; a failure is recorded and the remaining runs still go.
  e2e_run() {
    local label="$1" venv="$2" version="$3" markers="$4" home rc=0 t0
    t0=$(now_s)
    log "[$label] $venv/bin/python -m pytest tests/e2e -m '$markers' ${pytest_extra[*]}"
    home="$("$venv/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')" \
      || die "no pyspark in $venv (run scripts/setup.sh --matrix)"
    KBASE_E2E_JAR="$jar" KBASE_E2E_FAKE_AUTH2="$fake_bin" KBASE_E2E_GATEWAY="$gateway_bin" SPARK_HOME="$home" \
      KBASE_E2E_SPARK_VERSION="$version" \
      "$venv/bin/python" -m pytest "$REPO_ROOT/tests/e2e" -v --durations=15 -m "$markers" \
      "${pytest_extra[@]}" || rc=$?
    [ $rc -eq 5 ] && warn "pytest collected no tests (exit 5): that is a failure here"
    if [ $rc -ne 0 ]; then
      summary+=("FAILED  ${label} ($(( $(now_s) - t0 ))s, exit ${rc})")
      e2e_failed+=("$label")
    else
      summary+=("ok      ${label} ($(( $(now_s) - t0 ))s)")
    fi
  }
  if [ $base -eq 1 ]; then
    e2e_run "e2e Spark $PYSPARK_VERSION (whole suite)" "$VENV" "$PYSPARK_VERSION" "$base_markers"
  fi
  if [ $matrix -eq 1 ]; then
    for v in $SPARK_MATRIX; do
      e2e_run "e2e Spark $v (matrix subset)" "$(matrix_venv "$v")" "$v" "$matrix_markers"
    done
  fi
  if [ ${#e2e_failed[@]} -gt 0 ]; then
    printf '%s\n' "${summary[@]}" >&2
    die "end-to-end runs failed: ${e2e_failed[*]} (see their output above)"
  fi
fi

log "all steps passed in $(( $(now_s) - t_start ))s:"
printf '    %s\n' "${summary[@]}" >&2
