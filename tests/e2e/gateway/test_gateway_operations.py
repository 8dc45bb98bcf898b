"""What operators see and set (GATEWAY.md §1 rows "configuration", "health"; §2 "Health and
observability"): grpc.health.v1, the admin port, metrics that move, refused configurations."""

from __future__ import annotations

import pytest

import harness
from harness import bearer, config_rpc, expect

from .topology import EXPECTED_ROWS, session, small_query

PYTHON_PROXY_VARIABLES = harness.GATEWAY_PROXY_VARIABLES


def health_check(target: str, service: str):
    """grpc.health.v1.Health/Check through grpcio (the two one-field messages written by hand):
    (status code name, serving status number or None)."""
    import grpc

    def request(name: str) -> bytes:
        raw = name.encode()
        return b"\x0a" + bytes([len(raw)]) + raw if raw else b""

    with grpc.insecure_channel(target) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check", request_serializer=request,
                               response_deserializer=lambda b: b)
        try:
            answer = check(service, timeout=10)
        except grpc.RpcError as e:
            return e.code().name, None
    assert answer[:1] == b"\x08" and len(answer) == 2, answer  # field 1, varint
    return "OK", answer[1]


SERVING = 1


def test_gateway_health_check(gw):
    """As the Python proxy: SERVING for "" and the Spark Connect service, without a token."""
    target = gw.gateway.target
    assert health_check(target, "") == ("OK", SERVING)
    assert health_check(target, "spark.connect.SparkConnectService") == ("OK", SERVING)
    assert health_check(target, "no.such.Service") == ("NOT_FOUND", None)


def test_gateway_admin_endpoints(gw):
    g = gw.gateway
    assert g.admin("/healthz") == (200, "ok\n")
    assert g.admin("/readyz") == (200, "ready\n")
    assert g.admin("/nothing-here")[0] == 404


SERIES = [
    "kbase_gateway_calls_total", "kbase_gateway_refusals_total", "kbase_gateway_pod_connections",
    "kbase_gateway_pod_dials_total", "kbase_gateway_pod_dial_failures_total", "kbase_gateway_live_streams",
    "kbase_gateway_request_bytes_total", "kbase_gateway_response_bytes_total", "kbase_gateway_auth_decisions_total",
    "kbase_gateway_auth2_requests_total", "kbase_gateway_auth2_failures_total", "kbase_gateway_auth2_fail_fast_total",
    "kbase_gateway_token_cache_hits_total", "kbase_gateway_token_cache_misses_total",
    "kbase_gateway_token_refreshes_total", "kbase_gateway_stale_allows_total",
]


def test_gateway_metrics_present_and_moving(gw, tokens):
    """/metrics (the Python proxy has none): every series of GATEWAY.md §2, and each moves with
    the calls that should move it; no token in it."""
    g = gw.gateway
    before = g.metrics()
    spark = session(g.url("localhost", token=gw.t["carol"]))
    try:
        assert small_query(spark) == EXPECTED_ROWS
    finally:
        spark.stop()
    bad = tokens.new()
    expect(config_rpc(g.target, bearer(bad)), "UNAUTHENTICATED")
    expect(config_rpc(g.target, bearer(gw.t["erin"])), "UNAVAILABLE")
    after = g.metrics()
    missing = [s for s in SERIES if s not in after.names()]
    assert not missing, f"missing series {missing} in:\n{after.text}"

    def grew(name, **labels):
        return after.value(name, **labels) > before.value(name, **labels)

    assert grew("kbase_gateway_calls_total", method="/spark.connect.SparkConnectService/ExecutePlan", status="OK")
    assert grew("kbase_gateway_calls_total", status="UNAUTHENTICATED")
    assert grew("kbase_gateway_refusals_total", reason="pod_unavailable")
    assert after.value("kbase_gateway_pod_dial_failures_total") >= 1  # erin's pod, refused
    assert grew("kbase_gateway_auth_decisions_total", decision="allowed")
    assert after.value("kbase_gateway_auth_decisions_total") - before.value("kbase_gateway_auth_decisions_total") \
        > after.value("kbase_gateway_auth_decisions_total", decision="allowed") \
        - before.value("kbase_gateway_auth_decisions_total", decision="allowed"), "the denial was not counted"
    for name in ("kbase_gateway_auth2_requests_total", "kbase_gateway_token_cache_hits_total",
                 "kbase_gateway_request_bytes_total", "kbase_gateway_response_bytes_total"):
        assert grew(name), name
    assert after.value("kbase_gateway_live_streams") == 0
    for t in tokens.all():
        assert t not in after.text, "a token in /metrics"


@pytest.mark.parametrize("env,args,names", [
    ({"GATEWAY_BIDN": "127.0.0.1"}, [], ["GATEWAY_BIDN", "GATEWAY_BIND"]),
    ({"GATEWAY_SOMETHING": "1"}, [], ["GATEWAY_SOMETHING"]),
    ({"MAX_CHANNELS_PER_BACKEND": "0"}, [], ["MAX_CHANNELS_PER_BACKEND"]),
    ({}, ["--max-channels-per-backend", "many"], ["MAX_CHANNELS_PER_BACKEND", "--max-channels-per-backend"]),
    ({"BACKEND_CONNECT_TIMEOUT": "soon"}, [], ["BACKEND_CONNECT_TIMEOUT"]),
    ({"SERVICE_TEMPLATE": "jupyter-{user}.{namespace}"}, [], ["SERVICE_TEMPLATE", "{username}"]),
    ({"KBASE_AUTH_URL": "not a url"}, [], ["KBASE_AUTH_URL"]),
    ({"REQUIRE_MFA": "maybe"}, [], ["REQUIRE_MFA"]),
    ({"GATEWAY_RESOLVE": "jupyter-alice:15002"}, [], ["GATEWAY_RESOLVE"]),
], ids=["typo", "unknown", "zero-channels", "flag-not-a-number", "timeout-not-a-number", "template",
        "auth-url", "mfa-not-a-bool", "resolve"])
def test_gateway_refuses_bad_configuration(gw, workdir, env, args, names):
    """A bad value or an unknown GATEWAY_* variable (the Python proxy ignores unknown variables)
    stops start-up with exit status 2 and a message naming the setting; nothing is served."""
    r = harness.run_gateway(workdir, "gateway-refused", {"KBASE_AUTH_URL": gw.auth.url, **env}, args)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    for n in names:
        assert n in r.stderr, f"{n} not named in: {r.stderr}"
    assert "listening" not in r.stderr


def test_gateway_help_lists_the_python_proxy_variables(workdir):
    r = harness.run_gateway(workdir, "gateway-help", {}, ["--help"])
    assert r.returncode == 0, r.stderr
    for v in PYTHON_PROXY_VARIABLES:
        assert v in r.stdout, v
    assert "jupyter-{username}.{namespace}.svc.cluster.local" in r.stdout and "jupyterhub-prod" in r.stdout


@pytest.mark.slow
def test_gateway_bench_script_runs(gw):
    """scripts/gateway_bench.py's workloads, every one at ``--smoke`` sizes, against this package's
    topology: the benchmark keeps working as the gateway and the harness change. It measures
    nothing here (the machine is busy with the suite); what it checks is that every workload ran
    to its end and saw what its figures rest on."""
    import importlib
    import random
    import sys

    sys.path.insert(0, str(harness.REPO_ROOT / "scripts"))
    bench = importlib.import_module("gateway_bench")
    args = bench.parse_args(["--smoke"])
    out = bench.run_workloads(gw, args, random.Random(0))
    assert set(out) == set(bench.WORKLOADS)
    for name in ("select1", "collect", "miss"):
        assert set(out[name]["servers"]) in ({"G", "D", "D2"}, {"M", "N", "N2"}), out[name]
    assert out["collect"]["gateway_memory"]["peak_rss_vmhwm_mib"] > 0
    streams = args.stream_pods * args.streams_per_pod
    assert out["streams"]["live_streams_gauge"] >= streams
    assert sum(out["streams"]["stream_statuses_after_interrupt"].values()) == streams
    assert out["stampede"]["stampede-delay"]["gateway_auth2_lookups"] == 1
    assert out["miss"]["newcomer"]["statuses"].get("OK", 0) >= 1
    # --nginx: the third path of select1 and collect goes through nginx in front of the same pod.
    pod = gw.pods[next(iter(gw.pods))]
    nginx = harness.NginxProxy(gw.workdir, "bench-nginx", pod.target, None).start()
    try:
        for run, unit in ((bench.w_select1, "query"), (bench.w_collect, "fetch")):
            r = run(gw, args, random.Random(0), nginx)
            assert set(r["servers"]) == {"G", "D", "N"}, r
            assert set(r[f"nginx_cpu_ms_per_{unit}"]) == {"G", "D", "N"}, r
    finally:
        nginx.stop()
