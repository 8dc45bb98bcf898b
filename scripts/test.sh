#!/usr/bin/env bash
# The project's test command. Steps, each failing fast with a clear message:
#   1. scripts/setup.sh                      (Debian packages, Java 17, cargo, .venv)
#   2. cargo test --workspace                (Rust unit + integration + doc tests)
#   3. cargo build --release -p fake-auth2   (the fake Auth2 the JVM and e2e tests start)
#   4. gradle build                          (jar with the .so, JUnit tests, smoke test)
#   5. pytest tests/e2e                      (real Spark Connect 4.0.0 + pyspark + nginx TLS)
#
# Usage: scripts/test.sh [--quick] [--slow] [--e2e-only] [-- PYTEST_ARGS...]
#   --quick      stop after step 4 (no end-to-end tests)
#   --slow       also run the soaks (Rust, JVM, e2e) and the e2e latency benchmark
#                (excluded by default: about 10 more minutes)
#   --e2e-only   skip steps 2 and 4 except for building the jar (for iterating on tests/e2e)
#   -- ARGS      extra arguments for pytest, e.g. -- -k tls -x
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

quick=0 slow=0 e2e_only=0
pytest_extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --slow) slow=1 ;;
    --e2e-only) e2e_only=1 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; pytest_extra=("$@"); break ;;
    *) die "unknown option: $1 (see scripts/test.sh --help)" ;;
  esac
  shift
done
[ $quick -eq 1 ] && [ $e2e_only -eq 1 ] && die "--quick and --e2e-only exclude each other"

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

step setup "$REPO_ROOT/scripts/setup.sh"
detect_java_home
detect_spark_home
export JAVA_HOME SPARK_HOME
[ -n "${SPARK_HOME:-}" ] || die "SPARK_HOME not found in $VENV after setup"

fake_bin="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/fake-auth2"
gradle_args=(--offline --no-daemon -PsparkJars="$SPARK_HOME/jars" -PfakeAuth2Bin="$fake_bin")

if [ $e2e_only -eq 0 ]; then
  step "cargo test" cargo test --workspace
fi
step "fake-auth2 (release)" cargo build --release -p fake-auth2 --bin fake-auth2
if [ $e2e_only -eq 0 ]; then
  step "gradle build" gradle "${gradle_args[@]}" build
else
  step "gradle jar" gradle "${gradle_args[@]}" jar
fi
jar="$(find_jar)"
[ -n "$jar" ] || die "gradle finished but no build/libs/kbase-spark-auth-*.jar exists"
info "jar: $jar ($(du -h "$jar" | cut -f1))"

if [ $slow -eq 1 ] && [ $e2e_only -eq 0 ]; then
  step "soak (Rust core)" cargo test --release --test soak -- --ignored --nocapture
  step "soak (JVM)" gradle "${gradle_args[@]}" soak
fi

if [ $quick -eq 1 ]; then
  log "--quick: skipping the end-to-end tests"
else
  markers=(-m "not soak and not bench")
  [ $slow -eq 1 ] && markers=()
  e2e() {
    local rc=0
    KBASE_E2E_JAR="$jar" KBASE_E2E_FAKE_AUTH2="$fake_bin" \
      "$PY" -m pytest "$REPO_ROOT/tests/e2e" -v --durations=15 "${markers[@]}" "${pytest_extra[@]}" || rc=$?
    if [ $rc -eq 5 ]; then
      warn "pytest collected no tests (exit 5): that is a failure here"
    fi
    return $rc
  }
  step "e2e (pytest tests/e2e)" e2e
fi

log "all steps passed in $(( $(now_s) - t_start ))s:"
printf '    %s\n' "${summary[@]}" >&2
