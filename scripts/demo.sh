#!/usr/bin/env bash
# Demo of both programs, on 127.0.0.1, with a fake KBase Auth2 (users alice, bob and erin) and the
# real pyspark client:
#   1. the plugin: a Spark Connect 4.0 server (alice's "pod") guarded by KBaseAuthServerInterceptor;
#      straight to it, only alice gets in;
#   2. the gateway (kbase-spark-gateway) in front of two pods, alice's and bob's: one address for
#      everyone, each user reaching their own pod; erin (no pod running) and strangers are denied.
# Everything is stopped on exit.
#
# Usage: scripts/demo.sh [--serve] [--no-build]
#   --serve     after the scripted clients, keep everything up and print sc:// URLs to try,
#               until Ctrl-C (at most one hour)
#   --no-build  use the existing jar, fake-auth2 and kbase-spark-gateway binaries
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

serve=0 build=1
MAX_SERVE_S=3600
while [ $# -gt 0 ]; do
  case "$1" in
    --serve) serve=1 ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release"
fake_bin="$target/fake-auth2" gateway_bin="$target/kbase-spark-gateway"
if [ $build -eq 1 ]; then
  log "Building the fake Auth2, the gateway and the plugin jar (first time: a few minutes)"
  cargo build --release -q -p fake-auth2 --bin fake-auth2
  cargo build --release -q -p kbase-spark-gateway --bin kbase-spark-gateway
  gradle --offline --no-daemon -q -PsparkJars="$SPARK_HOME/jars" -PfakeAuth2Bin="$fake_bin" "${gradle_args[@]}" jar
fi
jar="$(find_jar)"
[ -n "$jar" ] || die "no build/libs/kbase-spark-auth-*.jar (run without --no-build)"
for bin in "$fake_bin" "$gateway_bin"; do [ -x "$bin" ] || die "no $bin (run without --no-build)"; done

work="$(mktemp -d "${TMPDIR:-/tmp}/kbase-spark-demo.XXXXXX")"
pids=""
t_demo=$(now_s)

# Background processes start with setsid: each leads its own process group (its pid is the
# group id), so it is stopped as a whole, and a Ctrl-C reaches only this script, whose trap
# stops them.
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  for pid in $pids; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    fi
  done
  for pid in $pids; do
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    fi
  done
  if [ $rc -eq 0 ] || [ "$interrupted" = 1 ]; then
    rm -rf "$work"
  else
    warn "demo failed (exit $rc); logs kept in $work (pod-*/spark.log, gateway.log, fake-auth2.log)"
  fi
  log "demo: everything stopped"
  exit $rc
}
trap cleanup EXIT
interrupted=0
trap 'interrupted=1; exit 130' INT TERM

rand_token() { head -c 20 /dev/urandom | base32 | tr -d '=\n'; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
alice_token="$(rand_token)" bob_token="$(rand_token)" erin_token="$(rand_token)"

log "Starting the fake KBase Auth2 (users: alice, bob, erin)"
cat > "$work/tokens.json" <<EOF
{"cachefor": 300000, "tokens": [
  {"token": "$alice_token", "user": "alice", "mfa": "Used", "display": "Alice"},
  {"token": "$bob_token", "user": "bob", "mfa": "Used", "display": "Bob"},
  {"token": "$erin_token", "user": "erin", "mfa": "Used", "display": "Erin (no notebook server running)"}
]}
EOF
setsid "$fake_bin" --port 0 --control-port 0 --tokens "$work/tokens.json" \
  --ready-file "$work/fake-ready.json" --max-lifetime-secs $((MAX_SERVE_S + 600)) \
  > "$work/fake-auth2.log" 2>&1 &
pids="$pids $!"
for _ in $(seq 1 100); do [ -s "$work/fake-ready.json" ] && break; sleep 0.1; done
[ -s "$work/fake-ready.json" ] || die "fake Auth2 did not start: $(cat "$work/fake-auth2.log")"
auth_url="$(sed -n 's/.*"url":"\([^"]*\)".*/\1/p' "$work/fake-ready.json")"
info "Auth2 at $auth_url"

# start_pod USER: a Spark Connect server owned by USER (USER's "pod", app name pod-USER), guarded
# by the plugin; sets USER_port.
start_pod() {
  local user="$1" dir="$work/pod-$1" port
  port="$(free_port)"
  mkdir -p "$dir/conf" "$dir/local"
  cat > "$dir/conf/spark-defaults.conf" <<EOF
# What a real deployment adds to spark-defaults.conf (the jar goes to \$SPARK_HOME/jars):
spark.connect.grpc.interceptor.classes   us.kbase.spark.KBaseAuthServerInterceptor
spark.kbase.auth.url                     $auth_url
spark.kbase.auth.owner                   $user
# Demo-only settings: loopback, small, quiet.
spark.master                             local[2]
spark.driver.memory                      768m
spark.driver.host                        127.0.0.1
spark.driver.bindAddress                 127.0.0.1
spark.ui.enabled                         false
spark.local.dir                          $dir/local
spark.sql.warehouse.dir                  $dir/warehouse
spark.connect.grpc.binding.address       127.0.0.1
spark.connect.grpc.binding.port          $port
spark.connect.grpc.port.maxRetries       0
# A short-lived JVM: the quick JIT tier only, one GC thread (halves the demo's start-up CPU).
spark.driver.extraJavaOptions            -XX:TieredStopAtLevel=1 -XX:+UseSerialGC
EOF
  cat > "$dir/conf/log4j2.properties" <<'EOF'
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
  (
    cd "$dir"
    exec setsid env -u USER -u KBASE_AUTH_URL SPARK_CONF_DIR="$dir/conf" SPARK_LOCAL_IP=127.0.0.1 \
      "$SPARK_HOME/bin/spark-submit" --class org.apache.spark.sql.connect.service.SparkConnectServer \
      --jars "$jar" --name "pod-$user" spark-internal
  ) > "$dir/spark.log" 2>&1 &
  pids="$pids $!"
  printf -v "${user}_port" '%s' "$port"
}

log "Starting two Spark Connect 4.0.0 servers with $(basename "$jar"): alice's pod and bob's pod"
alice_port="" bob_port=""
start_pod alice
start_pod bob
for user in alice bob; do
  port_var="${user}_port"
  if ! "$PY" "$REPO_ROOT/scripts/demo_client.py" wait "${!port_var}" 150; then
    tail -n 40 "$work/pod-$user/spark.log" >&2
    die "$user's Spark Connect server did not come up within 150 s (log: $work/pod-$user/spark.log)"
  fi
  info "$user's pod on 127.0.0.1:${!port_var} (log: $work/pod-$user/spark.log)"
done

# A new server's first query takes several seconds: bob's runs in the background during part 1.
"$PY" "$REPO_ROOT/scripts/demo_client.py" warm "$bob_port" "$bob_token" > "$work/warm-bob.log" 2>&1 &
warm_pid=$!

echo
log "Part 1, the plugin: straight to alice's pod, only alice gets in"
"$PY" "$REPO_ROOT/scripts/demo_client.py" run "$alice_port" "$alice_token" "$bob_token"
wait "$warm_pid" || die "the first query on bob's pod failed: $(tail -n 20 "$work/warm-bob.log")"

echo
log "What alice's pod logged about the denials (fingerprints, never tokens):"
# One line per distinct denial (a denied pyspark session makes a few calls).
grep -E 'KBase auth (denied|interceptor)|KBaseAuthServerInterceptor' "$work/pod-alice/spark.log" \
  | sed -E 's/^[0-9:.]+ //' | awk '!seen[$0]++' | cut -c1-300 | sed 's/^/    /' || true

# The gateway, started with BERDL's Python proxy's environment. In a cluster each pod's host name
# comes from DNS; here --resolve sends it to its server. erin's points at a port where nothing
# listens: her notebook server is not running.
gateway_port="$(free_port)" admin_port="$(free_port)" erin_port="$(free_port)"
template='jupyter-{username}.{namespace}.svc.cluster.local'
pod_host() { printf 'jupyter-%s.demo.svc.cluster.local:15002' "$1"; }
echo
log "Part 2, the gateway: one address for every user, in front of both pods"
setsid env KBASE_AUTH_URL="$auth_url" PROXY_LISTEN_PORT="$gateway_port" BACKEND_PORT=15002 \
  BACKEND_NAMESPACE=demo SERVICE_TEMPLATE="$template" GATEWAY_BIND=127.0.0.1 GATEWAY_ADMIN_PORT="$admin_port" \
  "$gateway_bin" --resolve "$(pod_host alice)=127.0.0.1:$alice_port" \
  --resolve "$(pod_host bob)=127.0.0.1:$bob_port" --resolve "$(pod_host erin)=127.0.0.1:$erin_port" \
  > "$work/gateway.log" 2>&1 &
pids="$pids $!"
if ! "$PY" "$REPO_ROOT/scripts/demo_client.py" wait "$gateway_port" 20; then
  cat "$work/gateway.log" >&2
  die "the gateway did not come up within 20 s (log: $work/gateway.log)"
fi
info "gateway on 127.0.0.1:$gateway_port: SERVICE_TEMPLATE=$template BACKEND_NAMESPACE=demo"
"$PY" "$REPO_ROOT/scripts/demo_client.py" gateway "$gateway_port" "$alice_token" "$bob_token" "$erin_token"

echo
log "What the gateway logged for the five queries (one line per call; never a token):"
grep 'kbase_spark_gateway::access' "$work/gateway.log" | grep 'ExecutePlan' \
  | sed -E 's/.* (user=[^ ]+ pod=[^ ]+ status=[A-Z_]+)( .*(reason=[a-z_]+))?.*/    \1 \3/' || true
info "the demo took $(( $(now_s) - t_demo )) s (after setup and build)"

if [ $serve -eq 1 ]; then
  cat <<EOF

Everything keeps running (at most $((MAX_SERVE_S / 60)) minutes; Ctrl-C stops everything). Try:

  $PY
  >>> from pyspark.sql import SparkSession
  >>> s = SparkSession.builder.remote("sc://localhost:$gateway_port/;token=$alice_token").create()
  >>> s.conf.get("spark.app.name")        # 'pod-alice': the gateway took alice to her own pod

  sc://localhost:$gateway_port/;token=$bob_token           # bob, through the gateway: his pod
  sc://127.0.0.1:$gateway_port/;x-kbase-token=$alice_token  # alice with x-kbase-token
  sc://localhost:$alice_port/;token=$bob_token           # bob straight to alice's pod: PERMISSION_DENIED
  curl http://127.0.0.1:$admin_port/metrics           # the gateway's metrics

Logs: $work/pod-alice/spark.log, $work/pod-bob/spark.log, $work/gateway.log
EOF
  end=$(( $(now_s) + MAX_SERVE_S ))
  while [ "$(now_s)" -lt "$end" ]; do
    for pid in $pids; do
      kill -0 "$pid" 2>/dev/null || die "a demo process (pid $pid) stopped unexpectedly (logs: $work)"
    done
    sleep 2
  done
  log "maximum serve time reached"
fi
