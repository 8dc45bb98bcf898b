#!/usr/bin/env python3
"""Load benchmark through real Spark Connect 4.0.0: the figures of docs/PERFORMANCE.md.

Run from the repository root (needs the jar, the fake Auth2 and the venv, as for the e2e tests;
`scripts/test.sh --quick` builds them):

    .venv/bin/python scripts/load_bench.py [--out .e2e-work/load-bench.json]

The defaults take about 4 minutes on a 2-core machine (well under 6); run it on an otherwise idle machine
(its numbers are meaningless while a build or test run competes for the cores). Every process it
starts listens on 127.0.0.1, is stopped by PID at the end (tests/e2e/harness.py), and the whole
run is bounded by ``--max-seconds``. Server logs: ``.e2e-work/load-bench-*/`` (last 3 runs).

What it measures (SPEC section 6), with one fake Auth2 and four Spark Connect servers started
once, in parallel:

* ``P``  - the plugin, owner alice, default settings (cache.maxTtl 5m; the fake says cachefor 5m);
* ``N``  - no interceptor at all (the baseline);
* ``N2`` - a second server without interceptor: ``N2/N`` is the noise floor between two
  identical servers, printed beside every ``P/N``;
* ``C``  - the plugin with caching effectively off (``spark.kbase.auth.cache.maxTtl=1ms``),
  only used in "what the cache is worth" and in one stampede.

Workloads a-c run after a warm-up per server as rounds of one batch per server, in a shuffled
order per round (interleaved, so drift of the machine hits every server alike). The orders are
balanced: each cycle of 6 rounds uses every permutation once, so each server is equally often
first, second, third (the batch after an idle stretch, e.g. after C's slow calls in d, runs
measurably slower on these VMs), and each measured batch is preceded by a few unmeasured calls to
the same server (``--pre-batch``). For each server:
p50/p99 latency over every measured call and RPC/s (calls / summed batch wall time); the ratios
``P/N`` and ``N2/N`` are the median over rounds of the per-round ratio (of p50, and of RPC/s).

a. ``seq-config``  - raw ``Config`` (GetAll) RPCs from one client thread;
b. ``conc-config`` - raw ``Config`` RPCs from ``--threads`` client threads, each with its own
   gRPC channel and its own TCP connection (local subchannel pool), released together by a barrier;
c. ``seq-execute`` - a raw ``ExecutePlan`` of ``Range(0, 10)`` (what ``spark.range(10).collect()``
   sends, without the reattach/release calls), whole response stream consumed, one thread.

Each workload on ``P`` uses a fresh token, so "one Auth2 request per token" holds per cache window.

d. ``cache-worth`` - the fake Auth2 answers every request after 50 ms (``--auth2-delay-ms``),
   modelling a remote Auth2; interleaved sequential Config batches on P (cache hits after the
   first call), C (every call asks Auth2) and N (reference).
e. ``stampede`` - ``--stampede`` threads, each with its own connected channel, released by a
   barrier, send their first call with one new token at once: Auth2 request count and statuses.
   Run three ways: P with the 50 ms Auth2 (all calls overlap the one request), P with the fake
   answering at once, and C (cache off, 50 ms: single flight alone must still give 1 request).

Output: a table on stdout and a JSON file (``--out``). Tokens never appear in either (labels only).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import threading
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
KEEP_RUNS = 3  # work directories (server logs) of earlier runs kept under .e2e-work/
sys.path.insert(0, str(REPO_ROOT / "tests" / "e2e"))
sys.path.insert(0, str(REPO_ROOT / "scripts"))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Load benchmark through real Spark Connect (plugin vs no interceptor).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", default=str(REPO_ROOT / ".e2e-work" / "load-bench.json"),
                    help="JSON result file")
    ap.add_argument("--rounds", type=int, default=24,
                    help="interleaved rounds per workload a-c (a multiple of 6 keeps the orders balanced)")
    ap.add_argument("--warmup", type=int, default=5000,
                    help="warm-up Config calls per server (a; b and c warm up with a fraction)")
    ap.add_argument("--seq-batch", type=int, default=400, help="calls per batch, workload a")
    ap.add_argument("--threads", type=int, default=8, help="client threads, workload b")
    ap.add_argument("--conc-batch", type=int, default=100,
                    help="calls per thread per batch, workload b")
    ap.add_argument("--exec-batch", type=int, default=40, help="ExecutePlans per batch, workload c")
    ap.add_argument("--exec-warmup", type=int, default=300, help="warm-up ExecutePlans per server")
    ap.add_argument("--auth2-delay-ms", type=int, default=50, help="fake Auth2 delay, d and e")
    ap.add_argument("--cache-rounds", type=int, default=12, help="interleaved rounds, workload d")
    ap.add_argument("--cache-batch-hit", type=int, default=200,
                    help="calls per batch on P and N, workload d")
    ap.add_argument("--cache-batch-miss", type=int, default=20,
                    help="calls per batch on C (each waits for Auth2), workload d")
    ap.add_argument("--stampede", type=int, default=64, help="simultaneous first calls, e")
    ap.add_argument("--pre-batch", type=int, default=20,
                    help="unmeasured calls of the batch's kind right before each measured batch "
                         "(a and d: this many; b: /4 per thread; c: /10; C in d: 1)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the round order shuffle")
    ap.add_argument("--max-seconds", type=int, default=900,
                    help="hard bound on the whole run: everything is stopped after it")
    return ap.parse_args(argv)


ARGS = parse_args()
# Bound the life of every server the harness starts, even if this script is killed (SIGKILL).
os.environ.setdefault("KBASE_E2E_MAX_SERVER_SECS", str(ARGS.max_seconds + 120))

from pyspark.sql.connect.proto import base_pb2, relations_pb2  # noqa: E402

import harness  # noqa: E402
from benchlib import Stubs, bound_run, log, run_interleaved, stampede, write_json  # noqa: E402
from harness import (FakeAuth2, SparkServer, bearer, config_request, new_token,  # noqa: E402
                     start_servers)

# ----------------------------------------------------------------------------- small helpers


def execute_request():
    return base_pb2.ExecutePlanRequest(
        session_id=harness.RAW_SESSION_ID,
        user_context=base_pb2.UserContext(user_id="e2e"),
        operation_id=str(uuid.uuid4()),
        plan=base_pb2.Plan(root=relations_pb2.Relation(
            common=relations_pb2.RelationCommon(plan_id=1),
            range=relations_pb2.Range(start=0, end=10, step=1))),
    )


def one_config(stub, md) -> int:
    req = config_request()
    t0 = time.perf_counter_ns()
    stub.Config(req, metadata=md, timeout=10)
    return time.perf_counter_ns() - t0


def one_execute(stub, md) -> int:
    """A raw ExecutePlan of Range(0, 10), whole stream consumed; checks 10 rows came back.

    (Non-reattachable, as sent here, the stream ends without a ``result_complete`` message.)"""
    req = execute_request()
    t0 = time.perf_counter_ns()
    rows = 0
    for resp in stub.ExecutePlan(req, metadata=md, timeout=30):
        if resp.HasField("arrow_batch"):
            rows += resp.arrow_batch.row_count
    dt = time.perf_counter_ns() - t0
    if rows != 10:
        raise RuntimeError(f"ExecutePlan returned {rows} rows, not 10")
    return dt


# A batch returns (latencies_ns, wall_s, client_cpu_s).


def seq_batch(fn, stub, md, n: int):
    lat = []
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        lat.append(fn(stub, md))
    return lat, time.perf_counter() - w0, time.process_time() - c0


def conc_batch(stubs: list, md, per_thread: int):
    """len(stubs) threads, one stub (connection) each, released together; per_thread calls each."""
    nthreads = len(stubs)
    barrier = threading.Barrier(nthreads + 1)
    results = [None] * nthreads
    errors = []

    def work(i):
        lat = []
        try:
            barrier.wait(timeout=30)
            for _ in range(per_thread):
                lat.append(one_config(stubs[i], md))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
        results[i] = lat

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(nthreads)]
    for t in threads:
        t.start()
    c0 = time.process_time()
    barrier.wait(timeout=30)
    w0 = time.perf_counter()
    for t in threads:
        t.join(timeout=120)
    wall = time.perf_counter() - w0
    cpu = time.process_time() - c0
    if errors or any(t.is_alive() for t in threads):
        raise RuntimeError(f"concurrent batch failed: {errors[:3]}")
    return [x for r in results for x in r], wall, cpu


# ----------------------------------------------------------------------------- the run


def main() -> int:
    args = ARGS
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    t_run = time.monotonic()

    watchdog = bound_run("load_bench", args.max_seconds)

    workdir = harness.new_work_dir("load-bench", KEEP_RUNS)

    log(f"work directory (logs): {workdir}")
    log(f"load average at start: {os.getloadavg()}; cores: {os.cpu_count()}")
    if os.getloadavg()[0] > 0.7:
        log("WARNING: the machine is not idle; the numbers will be noisy")

    labels = {}  # token -> label; tokens never leave this process

    def token(label: str) -> str:
        t = new_token()
        labels[t] = label
        return t

    tok = {k: token(k) for k in ("seq-config", "conc-config", "seq-execute", "cache-hit",
                                  "cache-off", "stampede-delay", "stampede-nodelay",
                                  "stampede-cache-off")}
    fake = FakeAuth2(workdir, "fake-auth2", [{"token": t, "user": "alice"} for t in tok.values()])
    servers = {
        "P": SparkServer(workdir, "P", {"spark.kbase.auth.url": None, "spark.kbase.auth.owner": "alice"}),
        "N": SparkServer(workdir, "N", {}, with_plugin=False),
        "N2": SparkServer(workdir, "N2", {}, with_plugin=False),
        "C": SparkServer(workdir, "C", {"spark.kbase.auth.url": None, "spark.kbase.auth.owner": "alice",
                                        "spark.kbase.auth.cache.maxTtl": "1ms"}),
    }
    stubs = Stubs()
    result = {
        "benchmark": "scripts/load_bench.py",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_at_start": os.getloadavg()},
        "args": vars(args) | {"seed": seed},
        "servers": {
            "P": "plugin, owner alice, default cache (maxTtl 5m; fake cachefor 5m)",
            "N": "no interceptor (baseline)",
            "N2": "no interceptor (noise floor N2/N)",
            "C": "plugin, owner alice, spark.kbase.auth.cache.maxTtl=1ms (cache effectively off)",
        },
        "jar": os.path.basename(os.environ["KBASE_E2E_JAR"]),
        "workloads": {},
    }
    ok = False
    try:
        fake.start()
        for name in ("P", "C"):
            servers[name].user_conf["spark.kbase.auth.url"] = fake.url
        log("starting 4 Spark Connect servers (P, N, N2, C) in parallel")
        t0 = time.monotonic()
        start_servers(list(servers.values()), timeout=240)
        result["server_start_s"] = round(time.monotonic() - t0, 1)
        log(f"servers ready in {result['server_start_s']} s")

        # Sanity: the plugin is really in front of P and C, and absent from N and N2.
        sanity = {}
        for name, s in servers.items():
            sanity[name] = harness.config_rpc(s.target, ()).name
        if sanity != {"P": "UNAUTHENTICATED", "N": "OK", "N2": "OK", "C": "UNAUTHENTICATED"}:
            raise RuntimeError(f"unexpected answers to a call without token: {sanity}")
        result["sanity_no_token"] = sanity

        # One stub (connection) per server for the sequential workloads.
        seq = {k: stubs.stub(s.target) for k, s in servers.items()}
        trio = ["P", "N", "N2"]

        # a. sequential Config
        md = bearer(tok["seq-config"])
        log(f"a. sequential Config: warm-up {args.warmup}/server, {args.rounds} rounds x {args.seq_batch}")
        result["workloads"]["a_seq_config"] = run_interleaved(
            "sequential raw Config RPCs, 1 client thread, 1 connection per server", trio,
            args.rounds, lambda s: seq_batch(one_config, seq[s], md, args.seq_batch), rng,
            warmup_fn=lambda s: seq_batch(one_config, seq[s], md, args.warmup),
            pre_fn=lambda s: seq_batch(one_config, seq[s], md, args.pre_batch))

        # b. concurrent Config
        md = bearer(tok["conc-config"])
        conc = {k: [stubs.stub(servers[k].target) for _ in range(args.threads)] for k in trio}
        warm_b = max(1, args.warmup // (4 * args.threads))
        log(f"b. concurrent Config: {args.threads} threads, warm-up {warm_b}/thread, "
            f"{args.rounds} rounds x {args.threads}x{args.conc_batch}")
        result["workloads"]["b_conc_config"] = run_interleaved(
            f"concurrent raw Config RPCs, {args.threads} client threads, each with its own "
            "channel and TCP connection", trio,
            args.rounds, lambda s: conc_batch(conc[s], md, args.conc_batch), rng,
            warmup_fn=lambda s: conc_batch(conc[s], md, warm_b),
            pre_fn=lambda s: conc_batch(conc[s], md, max(1, args.pre_batch // 4)))

        # c. sequential ExecutePlan
        md = bearer(tok["seq-execute"])
        log(f"c. sequential ExecutePlan(Range 10): warm-up {args.exec_warmup}/server, "
            f"{args.rounds} rounds x {args.exec_batch}")
        result["workloads"]["c_seq_execute"] = run_interleaved(
            "sequential raw ExecutePlan of Range(0,10) (10 rows, whole stream), 1 client thread",
            trio, args.rounds, lambda s: seq_batch(one_execute, seq[s], md, args.exec_batch), rng,
            warmup_fn=lambda s: seq_batch(one_execute, seq[s], md, args.exec_warmup),
            pre_fn=lambda s: seq_batch(one_execute, seq[s], md, max(1, args.pre_batch // 10)))

        # d. what the cache is worth, with a 50 ms Auth2
        fake.fault("delay", delay_ms=args.auth2_delay_ms)
        md_hit, md_off = bearer(tok["cache-hit"]), bearer(tok["cache-off"])
        log(f"d. cache worth: Auth2 delay {args.auth2_delay_ms} ms, {args.cache_rounds} rounds, "
            f"P/N x {args.cache_batch_hit}, C x {args.cache_batch_miss}")

        def cache_batch(s):
            if s == "C":
                return seq_batch(one_config, seq["C"], md_off, args.cache_batch_miss)
            return seq_batch(one_config, seq[s], md_hit, args.cache_batch_hit)

        def cache_warm(s):
            if s == "C":
                return seq_batch(one_config, seq["C"], md_off, 5)
            return seq_batch(one_config, seq[s], md_hit, 300)

        def cache_pre(s):
            if s == "C":
                return seq_batch(one_config, seq["C"], md_off, 1)
            return seq_batch(one_config, seq[s], md_hit, args.pre_batch)

        d = run_interleaved("cache worth: sequential Config with Auth2 answering after "
                            f"{args.auth2_delay_ms} ms; P default cache, C maxTtl=1ms",
                            ["P", "N", "C"], args.cache_rounds, cache_batch, rng,
                            warmup_fn=cache_warm, pre_fn=cache_pre)
        calls_off = 5 + args.cache_rounds * (args.cache_batch_miss + 1)
        d["auth2_requests"] = {"P (cache-hit token)": fake.count(tok["cache-hit"]),
                               "C (cache-off token)": fake.count(tok["cache-off"])}
        d["calls_on_C"] = calls_off
        sp, sc = d["servers"]["P"], d["servers"]["C"]
        d["cache_worth"] = {"p50_C_over_P": round(sc["p50_us"] / sp["p50_us"], 1),
                            "rps_P_over_C": round(sp["rps"] / sc["rps"], 1)}
        d["calls_on_P"] = 300 + args.cache_rounds * (args.cache_batch_hit + args.pre_batch)
        result["workloads"]["d_cache_worth"] = d

        # e. stampedes
        log(f"e. stampede: {args.stampede} simultaneous first calls, one new token each time")
        st = {}
        st["P_auth2_delay"] = stampede(servers["P"].target, bearer(tok["stampede-delay"]),
                                       args.stampede)
        st["P_auth2_delay"]["auth2_requests"] = fake.count(tok["stampede-delay"])
        st["C_cache_off_auth2_delay"] = stampede(servers["C"].target,
                                                 bearer(tok["stampede-cache-off"]),
                                                 args.stampede)
        st["C_cache_off_auth2_delay"]["auth2_requests"] = fake.count(tok["stampede-cache-off"])
        fake.fault("none")
        st["P_auth2_immediate"] = stampede(servers["P"].target, bearer(tok["stampede-nodelay"]),
                                           args.stampede)
        st["P_auth2_immediate"]["auth2_requests"] = fake.count(tok["stampede-nodelay"])
        st["auth2_delay_ms"] = args.auth2_delay_ms
        result["workloads"]["e_stampede"] = st

        counts = fake.counts()
        result["auth2_requests"] = {
            "total": counts["total"],
            "untracked": counts.get("untracked"),
            "by_token": {labels.get(t, "unknown-token"): n for t, n in counts["by_token"].items()},
        }
        # One request per token, except on C where every call is meant to miss.
        result["auth2_requests"]["one_per_token"] = all(
            n == 1 for k, n in result["auth2_requests"]["by_token"].items() if k != "cache-off")
        for name, s in servers.items():
            if not s.alive():
                raise RuntimeError(f"server {name} died during the run: see {s.log_path}")
        ok = True
    finally:
        try:
            fake.fault("none")
        except Exception:  # noqa: BLE001
            pass
        stubs.close()
        harness.close_channels()
        for s in servers.values():
            s.stop()
        fake.stop()
        watchdog.cancel()
    result["elapsed_s"] = round(time.monotonic() - t_run, 1)
    result["workdir"] = str(workdir)
    out = write_json(args.out, result)
    print_report(result)
    log(f"JSON: {out}")
    return 0 if ok else 1


# ----------------------------------------------------------------------------- report


def print_report(r: dict) -> None:
    w = r["workloads"]
    print()
    print(f"Spark Connect load benchmark ({r['machine']['cores']} cores, seed {r['args']['seed']}, "
          f"{r['elapsed_s']} s, load avg at start {r['machine']['loadavg_at_start'][0]:.2f})")
    for key in ("a_seq_config", "b_conc_config", "c_seq_execute", "d_cache_worth"):
        if key not in w:
            continue
        x = w[key]
        print()
        print(f"{key[0]}. {x['name']}")
        print(f"   {x['rounds']} rounds; load avg {x['loadavg1_before']} -> {x['loadavg1_after']}")
        print(f"   {'server':<7}{'calls':>8}{'p50 µs':>11}{'p99 µs':>11}{'RPC/s':>10}{'client CPU':>12}")
        for s, v in x["servers"].items():
            print(f"   {s:<7}{v['calls']:>8}{v['p50_us']:>11.1f}{v['p99_us']:>11.1f}{v['rps']:>10.1f}"
                  f"{v['client_cpu_pct']:>11.0f}%")
        rs = "; ".join(f"{k}: p50 {v['p50']:.3f}, RPC/s {v['rps']:.3f}"
                       for k, v in x["ratios_median_over_rounds"].items())
        print(f"   ratios (median over rounds) {rs}")
        if "cache_worth" in x:
            cw = x["cache_worth"]
            print(f"   cache worth: p50 C/P {cw['p50_C_over_P']}x, RPC/s P/C {cw['rps_P_over_C']}x")
        if "auth2_requests" in x:
            print(f"   Auth2 requests: {x['auth2_requests']}  (calls on C: {x['calls_on_C']}, "
                  f"on P: {x['calls_on_P']})")
    if "e_stampede" in w:
        e = w["e_stampede"]
        print()
        print(f"e. stampede: simultaneous first calls with one new token (Auth2 delay "
              f"{e['auth2_delay_ms']} ms where said)")
        for k, v in e.items():
            if not isinstance(v, dict):
                continue
            print(f"   {k:<26} calls {v['calls']}, Auth2 requests {v['auth2_requests']}, "
                  f"statuses {v['statuses']}, start spread {v['start_spread_ms']} ms, "
                  f"{v['started_before_first_answer']} started before the first answer, "
                  f"latency {v['latency_ms_min']}-{v['latency_ms_max']} ms")
    if "auth2_requests" in r:
        a = r["auth2_requests"]
        print()
        print(f"Auth2 requests for the run: total {a['total']} (untracked {a['untracked']}); "
              f"one per token (cache-off excepted): {a['one_per_token']}; by token:")
        for k, v in a["by_token"].items():
            print(f"   {k:<22}{v:>6}")


if __name__ == "__main__":
    sys.exit(main())
