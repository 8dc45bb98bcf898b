"""What the load benchmarks share (scripts/load_bench.py, scripts/gateway_bench.py): percentiles,
interleaved rounds over the compared servers, gRPC channels of their own, the stampede of first
calls. Import it after setting the environment harness reads at import (KBASE_E2E_MAX_SERVER_SECS),
with tests/e2e on sys.path."""

from __future__ import annotations

import collections
import itertools
import json
import math
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

import grpc
import harness
from harness import config_request
from pyspark.sql.connect.proto import base_pb2_grpc


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def bound_run(name: str, max_seconds: float) -> threading.Timer:
    """The hard bound on a whole run: after ``max_seconds`` every process the harness started is
    stopped and the interpreter exits (3). SIGTERM unwinds normally, so that finally blocks and
    atexit stop the servers. Cancel the returned timer when done."""
    def overtime():
        print(f"\n{name}: --max-seconds={max_seconds} exceeded; stopping everything", file=sys.stderr, flush=True)
        harness.stop_all(grace=5)
        os._exit(3)

    watchdog = threading.Timer(max_seconds, overtime)
    watchdog.daemon = True
    watchdog.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return watchdog


def write_json(path: str, result: dict) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def pct(sorted_vals: list, q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def balanced_orders(servers: list, rounds: int, rng) -> list:
    """Round orders: every permutation of ``servers`` once per cycle, shuffled within the cycle,
    so that each server takes each position equally often when ``rounds`` is a multiple of
    len(servers)! (the batch after an idle stretch runs measurably slower on these VMs)."""
    perms = [list(p) for p in itertools.permutations(servers)]
    orders = []
    while len(orders) < rounds:
        cycle = [list(p) for p in perms]
        rng.shuffle(cycle)
        orders.extend(cycle)
    return orders[:rounds]


def new_channel(target: str):
    """A channel with its own TCP connection (not shared through gRPC's global subchannel pool)."""
    return grpc.insecure_channel(target, options=[("grpc.enable_retries", 0),
                                                  ("grpc.use_local_subchannel_pool", 1)])


class Stubs:
    """Spark Connect stubs on channels of their own, closed at the end."""

    def __init__(self):
        self.channels = []

    def stub(self, target: str, connect_timeout: float = 15.0):
        ch = new_channel(target)
        self.channels.append(ch)
        grpc.channel_ready_future(ch).result(timeout=connect_timeout)
        return base_pb2_grpc.SparkConnectServiceStub(ch)

    def close(self):
        for ch in self.channels:
            try:
                ch.close()
            except Exception:  # noqa: BLE001
                pass
        self.channels.clear()


def run_interleaved(name: str, servers: list, rounds: int, batch_fn, rng, warmup_fn=None,
                    pre_fn=None) -> dict:
    """``rounds`` rounds of one batch per server in a shuffled, balanced order; ``pre_fn(s)``
    (unmeasured) runs right before each measured batch. ``batch_fn(s)`` returns (latencies in ns,
    wall seconds, client CPU seconds). Per-server stats, and each server's ratios to
    ``servers[1]`` (the baseline): p50, p99 and RPC/s as the median over rounds of per-round
    ratios, and p99 over every call pooled."""
    if warmup_fn:
        for s in servers:
            warmup_fn(s)
    per_round = []
    lat = {s: [] for s in servers}
    wall = {s: 0.0 for s in servers}
    cpu = {s: 0.0 for s in servers}
    load0 = os.getloadavg()[0]
    t_start = time.monotonic()
    for order in balanced_orders(servers, rounds, rng):
        r = {"order": order}
        for s in order:
            if pre_fn:
                pre_fn(s)
            ls, w, c = batch_fn(s)
            lat[s].extend(ls)
            wall[s] += w
            cpu[s] += c
            v = sorted(ls)
            r[s] = {"p50_us": pct(v, 50) / 1e3, "p99_us": pct(v, 99) / 1e3, "rps": len(ls) / w}
        per_round.append(r)
    out = {"name": name, "rounds": rounds, "servers": {},
           "elapsed_s": round(time.monotonic() - t_start, 1),
           "loadavg1_before": round(load0, 2), "loadavg1_after": round(os.getloadavg()[0], 2)}
    for s in servers:
        v = sorted(lat[s])
        out["servers"][s] = {
            "calls": len(v),
            "p50_us": round(pct(v, 50) / 1e3, 1),
            "p99_us": round(pct(v, 99) / 1e3, 1),
            "mean_us": round(statistics.fmean(v) / 1e3, 1),
            "rps": round(len(v) / wall[s], 1),
            "client_cpu_pct": round(100 * cpu[s] / wall[s], 0),
            "round_p50_median_us": round(statistics.median(r[s]["p50_us"] for r in per_round), 1),
            "round_p99_median_us": round(statistics.median(r[s]["p99_us"] for r in per_round), 1),
        }
    base = servers[1]  # the baseline
    ratios = {}
    for s in servers:
        if s == base:
            continue
        ratios[f"{s}/{base}"] = {
            "p50": round(statistics.median(r[s]["p50_us"] / r[base]["p50_us"] for r in per_round), 3),
            "p99": round(statistics.median(r[s]["p99_us"] / r[base]["p99_us"] for r in per_round), 3),
            "rps": round(statistics.median(r[s]["rps"] / r[base]["rps"] for r in per_round), 3),
            # Every call of the run pooled: the tail with enough calls to mean something.
            "p99_pooled": round(out["servers"][s]["p99_us"] / out["servers"][base]["p99_us"], 3),
        }
    out["ratios_median_over_rounds"] = ratios
    out["per_round"] = [{k: (v if k == "order" else {kk: round(vv, 1) for kk, vv in v.items()})
                         for k, v in r.items()} for r in per_round]
    return out


def stampede(target: str, md, n: int) -> dict:

    """n threads, each with its own connected channel, send one Config at once (barrier)."""
    stubs = Stubs()
    try:
        return _stampede([stubs.stub(target) for _ in range(n)], md, n)
    finally:
        stubs.close()


def _stampede(conns: list, md, n: int) -> dict:
    barrier = threading.Barrier(n)
    res = [None] * n

    def work(i):
        barrier.wait(timeout=30)
        t0 = time.perf_counter()
        try:
            _, call = conns[i].Config.with_call(config_request(), metadata=md, timeout=30)
            code = call.code()
        except grpc.RpcError as e:
            code = e.code()
        res[i] = (t0, time.perf_counter(), code.name)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    if any(t.is_alive() for t in threads) or any(r is None for r in res):
        raise RuntimeError("stampede threads did not finish")
    starts = sorted(r[0] for r in res)
    first_end = min(r[1] for r in res)
    return {
        "calls": n,
        "statuses": dict(collections.Counter(r[2] for r in res)),
        "start_spread_ms": round((starts[-1] - starts[0]) * 1e3, 2),
        "started_before_first_answer": sum(1 for s in starts if s < first_end),
        "latency_ms_min": round(min(r[1] - r[0] for r in res) * 1e3, 1),
        "latency_ms_max": round(max(r[1] - r[0] for r in res) * 1e3, 1),
    }
