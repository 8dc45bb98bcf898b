#!/usr/bin/env bash
# Demo: a Spark Connect 4.0 server guarded by KBaseAuthServerInterceptor, a fake KBase Auth2
# that knows two users (alice = the pod owner, bob), and the real pyspark client showing who
# gets in. Everything runs on 127.0.0.1 and is stopped on exit.
#
# Usage: scripts/demo.sh [--serve] [--no-build]
#   --serve     after the scripted client, keep the server up and print sc:// URLs to try,
#               until Ctrl-C (at most one hour)
#   --no-build  use the existing jar and fake-auth2 binary
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

serve=0 build=1
MAX_SERVE_S=3600
while [ $# -gt 0 ]; do
  case "$1" in
    --serve) serve=1 ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option: $1 (see scripts/demo.sh --help)" ;;
  esac
  shift
done
cd "$REPO_ROOT"

setup_args=() gradle_args=()
if [ "$(choose_host_only 0)" -eq 1 ]; then
  setup_args=(--host-only) gradle_args=(-Pplatforms=host)
fi
"$REPO_ROOT/scripts/setup.sh" "${setup_args[@]}"
detect_java_home
detect_spark_home
export JAVA_HOME SPARK_HOME

fake_bin="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/fake-auth2"
if [ $build -eq 1 ]; then
  log "Building the fake Auth2 server and the plugin jar (first time: a few minutes)"
  cargo build --release -q -p fake-auth2 --bin fake-auth2
  gradle --offline --no-daemon -q -PsparkJars="$SPARK_HOME/jars" -PfakeAuth2Bin="$fake_bin" "${gradle_args[@]}" jar
fi
jar="$(find_jar)"
[ -n "$jar" ] || die "no build/libs/kbase-spark-auth-*.jar (run without --no-build)"
[ -x "$fake_bin" ] || die "no $fake_bin (run without --no-build)"

work="$(mktemp -d "${TMPDIR:-/tmp}/kbase-spark-demo.XXXXXX")"
fake_pid="" spark_pid=""

# Background processes start with setsid: each leads its own process group (its pid is the
# group id), so it is stopped as a whole, and a Ctrl-C reaches only this script, whose trap
# stops them.
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  for pid in $spark_pid $fake_pid; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    fi
  done
  for pid in $spark_pid $fake_pid; do
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    fi
  done
  if [ $rc -eq 0 ] || [ "$interrupted" = 1 ]; then
    rm -rf "$work"
  else
    warn "demo failed (exit $rc); logs kept in $work (spark.log, fake-auth2.log)"
  fi
  log "demo: everything stopped"
  exit $rc
}
trap cleanup EXIT
interrupted=0
trap 'interrupted=1; exit 130' INT TERM

rand_token() { head -c 20 /dev/urandom | base32 | tr -d '=\n'; }
alice_token="$(rand_token)"
bob_token="$(rand_token)"

log "Starting the fake KBase Auth2 (users: alice = owner, bob)"
cat > "$work/tokens.json" <<EOF
{"cachefor": 300000, "tokens": [
  {"token": "$alice_token", "user": "alice", "mfa": "Used", "display": "Alice (pod owner)"},
  {"token": "$bob_token", "user": "bob", "mfa": "Used", "display": "Bob"}
]}
EOF
setsid "$fake_bin" --port 0 --control-port 0 --tokens "$work/tokens.json" \
  --ready-file "$work/fake-ready.json" --max-lifetime-secs $((MAX_SERVE_S + 600)) \
  > "$work/fake-auth2.log" 2>&1 &
fake_pid=$!
for _ in $(seq 1 100); do [ -s "$work/fake-ready.json" ] && break; sleep 0.1; done
[ -s "$work/fake-ready.json" ] || die "fake Auth2 did not start: $(cat "$work/fake-auth2.log")"
auth_url="$(sed -n 's/.*"url":"\([^"]*\)".*/\1/p' "$work/fake-ready.json")"
info "Auth2 at $auth_url"

port="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
mkdir -p "$work/conf" "$work/local"
cat > "$work/conf/spark-defaults.conf" <<EOF
# What a real deployment adds to spark-defaults.conf (the jar goes to \$SPARK_HOME/jars):
spark.connect.grpc.interceptor.classes   us.kbase.spark.KBaseAuthServerInterceptor
spark.kbase.auth.url                     $auth_url
spark.kbase.auth.owner                   alice
# Demo-only settings: loopback, small, quiet.
spark.master                             local[2]
spark.driver.memory                      768m
spark.driver.host                        127.0.0.1
spark.driver.bindAddress                 127.0.0.1
spark.ui.enabled                         false
spark.local.dir                          $work/local
spark.sql.warehouse.dir                  $work/warehouse
spark.connect.grpc.binding.address       127.0.0.1
spark.connect.grpc.binding.port          $port
spark.connect.grpc.port.maxRetries       0
EOF
cat > "$work/conf/log4j2.properties" <<'EOF'
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss.SSS} %p %c{1}: %m%n%ex
logger.kbase.name = us.kbase
logger.kbase.level = info
logger.connect.name = org.apache.spark.sql.connect.service.SparkConnectServer
logger.connect.level = info
EOF

log "Starting Spark Connect 4.0.0 on 127.0.0.1:$port with $(basename "$jar")"
(
  cd "$work"
  exec setsid env -u USER -u KBASE_AUTH_URL SPARK_CONF_DIR="$work/conf" SPARK_LOCAL_IP=127.0.0.1 \
    "$SPARK_HOME/bin/spark-submit" --class org.apache.spark.sql.connect.service.SparkConnectServer \
    --jars "$jar" --name kbase-auth-demo spark-internal
) > "$work/spark.log" 2>&1 &
spark_pid=$!
if ! "$PY" "$REPO_ROOT/scripts/demo_client.py" wait "$port" 150; then
  tail -n 40 "$work/spark.log" >&2
  die "Spark Connect did not come up within 150 s (log: $work/spark.log)"
fi
info "server up; its log: $work/spark.log"

log "Running the pyspark client"
"$PY" "$REPO_ROOT/scripts/demo_client.py" run "$port" "$alice_token" "$bob_token"

echo
log "What the server logged about the denials (fingerprints, never tokens):"
# One line per distinct denial (a denied pyspark session makes a few calls).
grep -E 'KBase auth (denied|interceptor)|KBaseAuthServerInterceptor' "$work/spark.log" \
  | sed -E 's/^[0-9:.]+ //' | awk '!seen[$0]++' | cut -c1-300 | sed 's/^/    /' || true

if [ $serve -eq 1 ]; then
  cat <<EOF

The server keeps running (at most $((MAX_SERVE_S / 60)) minutes; Ctrl-C stops everything). Try:

  $PY
  >>> from pyspark.sql import SparkSession
  >>> s = SparkSession.builder.remote("sc://localhost:$port/;token=$alice_token").create()
  >>> s.range(3).show()                                  # alice, the owner: allowed

  sc://localhost:$port/;token=$bob_token           # bob: PERMISSION_DENIED
  sc://127.0.0.1:$port/;x-kbase-token=$alice_token  # alice via x-kbase-token: allowed
  sc://127.0.0.1:$port/                                      # no token: UNAUTHENTICATED

Server log: $work/spark.log
EOF
  end=$(( $(now_s) + MAX_SERVE_S ))
  while [ "$(now_s)" -lt "$end" ] && kill -0 "$spark_pid" 2>/dev/null; do sleep 2; done
  kill -0 "$spark_pid" 2>/dev/null || die "the Spark server stopped unexpectedly (log: $work/spark.log)"
  log "maximum serve time reached"
fi
