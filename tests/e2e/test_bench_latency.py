"""Per-RPC latency through real Spark Connect with and without the plugin (SPEC section 6).

A measurement, not a pass/fail test (marked ``bench``; run with ``scripts/test.sh --slow`` or
``pytest tests/e2e -m bench -s``). Three servers: P with the plugin (cache hits after warm-up),
N1 and N2 without any interceptor. Batches of raw Config RPCs are interleaved P N1 N2 P N1 N2 ...
in a shuffled order per round; the figure is the median over rounds of p50(P)/p50(N1), with
p50(N2)/p50(N1) beside it as the noise floor between two identical servers.
"""

from __future__ import annotations

import json
import random
import statistics
import time

import pytest

from harness import FakeAuth2, SparkServer, bearer, config_request, start_servers, _stub

WARMUP = 3000
ROUNDS = 25
BATCH = 400


def _batch(stub, metadata, n) -> list:
    lat = []
    for _ in range(n):
        req = config_request()
        t0 = time.perf_counter_ns()
        stub.Config(req, metadata=metadata, timeout=10)
        lat.append(time.perf_counter_ns() - t0)
    return lat


@pytest.mark.bench
def test_rpc_latency_with_and_without_plugin(workdir, tokens, all_servers):
    token = tokens.new()
    fake = FakeAuth2(workdir, "fake-bench", [{"token": token, "user": "alice", "mfa": "Used"}]).start()
    p = SparkServer(workdir, "bench-plugin", {"spark.kbase.auth.url": fake.url,
                                              "spark.kbase.auth.owner": "alice"})
    n1 = SparkServer(workdir, "bench-plain-1", {}, with_plugin=False)
    n2 = SparkServer(workdir, "bench-plain-2", {}, with_plugin=False)
    servers = {"P": p, "N1": n1, "N2": n2}
    all_servers.extend(servers.values())
    try:
        start_servers(list(servers.values()))
        md = bearer(token)
        stubs = {k: _stub(s.target, None) for k, s in servers.items()}
        for k in servers:
            _batch(stubs[k], md, WARMUP)
        rounds = []
        for _ in range(ROUNDS):
            order = list(servers)
            random.shuffle(order)
            p50 = {}
            for k in order:
                p50[k] = statistics.median(_batch(stubs[k], md, BATCH)) / 1e3  # µs
            rounds.append(p50)
        ratio = statistics.median(r["P"] / r["N1"] for r in rounds)
        noise = statistics.median(r["N2"] / r["N1"] for r in rounds)
        med = {k: statistics.median(r[k] for r in rounds) for k in servers}
        result = {
            "p50_us": {k: round(v, 1) for k, v in med.items()},
            "ratio_plugin_vs_plain": round(ratio, 3),
            "noise_floor_plain_vs_plain": round(noise, 3),
            "ratio_of_medians_plugin_vs_plain": round(med["P"] / med["N1"], 3),
            "ratio_of_medians_plain_vs_plain": round(med["N2"] / med["N1"], 3),
            "rounds": ROUNDS, "batch": BATCH, "warmup": WARMUP,
            "auth2_requests": fake.count(token),
        }
        (workdir / "bench-latency.json").write_text(json.dumps(result, indent=2))
        print("\nper-RPC latency (raw Config RPC, p50):", json.dumps(result, indent=2))
        assert fake.count(token) == 1, "every call after the first must be a cache hit"
        assert ratio < 1.5, f"the plugin adds more than 50 % per RPC: {result}"
    finally:
        for s in servers.values():
            s.stop()
        fake.stop()
