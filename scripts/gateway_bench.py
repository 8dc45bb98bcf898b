#!/usr/bin/env python3
"""The gateway's figures through real Spark Connect 4.0.0 pods (docs/PERFORMANCE.md, "Gateway";
GATEWAY.md section 5).

Run from the repository root (needs the jar, the fake Auth2, the release gateway and the venv:
`scripts/test.sh --quick` builds them):

    $KBASE_VENV/bin/python scripts/gateway_bench.py [--workloads select1,collect,streams,stampede,miss]

Every process listens on 127.0.0.1 and is stopped by PID at the end, even on failure
(tests/e2e/harness.py); the whole run is bounded by ``--max-seconds``. Logs:
``.e2e-work/gateway-bench-*/`` (last 3 runs). Tokens never appear in the output. A measurement,
not a test: nothing here asserts a time. The e2e suite runs every workload tiny (``--smoke``'s
sizes) against its own topology (tests/e2e/gateway/test_gateway_operations.py), so that the
script keeps working.

The parts are the gateway e2e tests' topology (tests/e2e/gateway/topology.py): one Spark Connect
4.0.0 pod per user (``alice``, ``bob``, …, each with the plugin jar and the user as its owner;
here with the JVM's default JIT and GC, not the tests' lean ones), the release gateway in front
of them (the Python proxy's environment and the tests' gateway settings, ``SERVICE_TEMPLATE``
hosts sent to the pods by ``--resolve``; an access line per call at INFO into its log file), one
fake Auth2 for the gateway and another for the pods' plugins (so that slowing the gateway's
Auth2 slows only the gateway's lookups). Clients: the real pyspark client (1, 2) and raw gRPC
stubs (3, 5, 6). Comparisons run interleaved in one run: rounds of one batch per path, every
order of the paths once per cycle (balanced), ratios the median over rounds of per-round ratios;
``D2`` is a second, identical direct path whose ratio to ``D`` is the noise floor; with ``--nginx``
the third path is ``N`` instead, nginx's gRPC proxy (``grpc_pass``, one worker, plaintext HTTP/2)
in front of the same pod: what a mature C proxy costs on this machine, beside the gateway.

1. ``select1``: ``spark.sql("select 1").collect()`` through the gateway (``G``) and straight to
   the same pod (``D``, ``D2``), three pyspark sessions of the first user's with one token: p50 and
   p99 ratios ``G/D`` (goal 1.10 / 1.25) beside ``D2/D``.
2. ``collect``: a ~100 MB result (``--collect-rows`` rows of ~1 KiB, cached on the pod) fetched
   with ``toArrow()`` on the same three paths: time ratio ``G/D`` (goal 1.10), and the
   gateway's peak RSS meanwhile (VmHWM, reset before; goal 64 MiB).
3. ``streams``: ``--stream-pods`` pods × ``--streams-per-pod`` ExecutePlan streams kept open at
   once through the gateway (queries that sleep on the pod), from ``--stream-channels`` client
   connections; several tokens per user. The gateway's peak RSS (goal 64 MiB) once its
   ``live_streams`` gauge shows them all; then every session is interrupted.
4. (no Spark here: the added latency of a unary call is `cargo bench -p kbase-spark-gateway
   --bench added_latency`.)
5. ``stampede``: ``--stampede`` threads, each with its own connection, send their first call
   with one new token at once, the gateway's Auth2 answering after 50 ms (and at once): Auth2
   lookups (goal 1).
6. ``miss``: the users of the first ``--miss-pods`` pods but the last call their pods steadily
   (raw ``Config``, one thread each) while the last one's calls, each with a token never seen, wait ``--miss-delay-ms`` on the gateway's
   Auth2 (``M``), and without that (``N``, ``N2``): the steady users' p99 ratio ``M/N`` (goal
   1.25) beside ``N2/N``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
KEEP_RUNS = 3
sys.path.insert(0, str(REPO_ROOT / "tests" / "e2e"))
sys.path.insert(0, str(REPO_ROOT / "scripts"))
if __name__ == "__main__":  # before harness reads it: the bound on every process's life
    os.environ.setdefault("KBASE_E2E_MAX_SERVER_SECS", "7200")

import grpc  # noqa: E402
from pyspark.sql.connect.proto import base_pb2, relations_pb2  # noqa: E402

import harness  # noqa: E402
from benchlib import Stubs, bound_run, log, pct, run_interleaved, stampede, write_json  # noqa: E402
from gateway.topology import Topology, make_pod, pod_of, session  # noqa: E402
from harness import FakeAuth2, Gateway, TokenRegistry, bearer, config_request  # noqa: E402

WORKLOADS = ("select1", "collect", "streams", "stampede", "miss")
# Not erin (the tests' user without a pod, whose host the topology sends to a closed port).
USERS = ("alice", "bob", "carol", "dave", "frank")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="which, comma-separated")
    ap.add_argument("--out", default=str(REPO_ROOT / ".e2e-work" / "gateway-bench.json"), help="JSON result file")
    ap.add_argument("--seed", type=int, default=None, help="seed of the round orders")
    ap.add_argument("--rounds", type=int, default=12, help="interleaved rounds, select1 (a multiple of 6)")
    ap.add_argument("--select-batch", type=int, default=100, help="queries per path per round, select1")
    ap.add_argument("--select-warmup", type=int, default=300, help="warm-up queries per path, select1")
    ap.add_argument("--collect-rows", type=int, default=100_000, help="rows of ~1 KiB, collect")
    ap.add_argument("--collect-rounds", type=int, default=6, help="interleaved rounds, collect")
    ap.add_argument("--stream-pods", type=int, default=5, help="pods, streams")
    ap.add_argument("--streams-per-pod", type=int, default=40, help="live streams per pod, streams")
    ap.add_argument("--stream-channels", type=int, default=20, help="client connections, streams")
    ap.add_argument("--stream-tokens", type=int, default=2, help="tokens per user, streams")
    ap.add_argument("--hold-seconds", type=float, default=10.0, help="how long all streams stay open")
    ap.add_argument("--stampede", type=int, default=64, help="simultaneous first calls, stampede")
    ap.add_argument("--miss-pods", type=int, default=4,
                    help="pods, miss: the last pod's user is the newcomer, the others call steadily")
    ap.add_argument("--miss-rounds", type=int, default=6, help="interleaved rounds, miss (a multiple of 6)")
    ap.add_argument("--miss-phase-seconds", type=float, default=4.0, help="length of one batch, miss")
    ap.add_argument("--miss-delay-ms", type=int, default=300, help="the gateway's Auth2 delay, miss")
    ap.add_argument("--miss-threads", type=int, default=1, help="the newcomer's concurrent calls, miss")
    ap.add_argument("--nginx", action="store_true",
                    help="select1 and collect: the third path is N, nginx's gRPC proxy (one worker, plaintext) "
                         "in front of the same pod, instead of D2 (a reference: what a mature proxy adds here)")
    ap.add_argument("--max-seconds", type=int, default=1800, help="bound on the whole run")
    ap.add_argument("--smoke", action="store_true",
                    help="every workload, tiny (seconds; what the e2e suite runs): checks the script, measures nothing")
    args = ap.parse_args(argv)
    if args.smoke:
        apply_smoke(args)
    args.workloads = [w for w in args.workloads.split(",") if w]
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workloads {sorted(unknown)}; known: {', '.join(WORKLOADS)}")
    return args


SMOKE = {"rounds": 2, "select_batch": 3, "select_warmup": 2, "collect_rows": 2000, "collect_rounds": 2,
         "stream_pods": 2, "streams_per_pod": 2, "stream_channels": 2, "hold_seconds": 0.2, "stampede": 4,
         "miss_pods": 2, "miss_rounds": 1, "miss_phase_seconds": 0.3, "miss_delay_ms": 100}


def apply_smoke(args) -> None:
    for k, v in SMOKE.items():
        setattr(args, k, v)


# ----------------------------------------------------------------------------- the gateway process


def gateway_pid(g: Gateway) -> int:
    """The gateway's own PID: harness starts it under `timeout`, whose only child it is."""
    children = Path(f"/proc/{g.proc.pid}/task/{g.proc.pid}/children").read_text().split()
    assert len(children) == 1, f"timeout({g.proc.pid}) has children {children}"
    pid = int(children[0])
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    assert "kbase-spark-gat" in comm, f"PID {pid} is {comm!r}, not the gateway"
    return pid


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the whole process so far (/proc/PID/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GatewayCpu:
    """The gateway's (or another proxy's: ``label``) CPU time spent during each path's measured
    batches."""

    def __init__(self, pid: int, label: str = "gateway"):
        self.pid, self.label, self.seconds, self.calls = pid, label, {}, {}

    def batch(self, fn):
        def measured(path):
            c0 = cpu_seconds(self.pid)
            lat, wall, cpu = fn(path)
            self.seconds[path] = self.seconds.get(path, 0.0) + cpu_seconds(self.pid) - c0
            self.calls[path] = self.calls.get(path, 0) + len(lat)
            return lat, wall, cpu
        return measured

    def report(self, unit: str) -> dict:
        return {f"{self.label}_cpu_ms_per_{unit}": {p: round(1e3 * s / self.calls[p], 3)
                                                    for p, s in self.seconds.items()}}


class Rss:
    """The gateway's resident memory over a stretch: VmHWM reset at the start (clear_refs 5), read
    at the end, plus VmRSS sampled every 20 ms as a cross-check."""

    def __init__(self, pid: int):
        self.pid = pid

    def __enter__(self) -> "Rss":
        self.before_kib = status_kib(self.pid, "VmRSS")
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.max_sampled_kib = self.before_kib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.max_sampled_kib = max(self.max_sampled_kib, status_kib(self.pid, "VmRSS"))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.hwm_kib = status_kib(self.pid, "VmHWM")
        self.after_kib = status_kib(self.pid, "VmRSS")

    def report(self) -> dict:
        mib = lambda kib: round(kib / 1024, 1)  # noqa: E731
        return {"rss_before_mib": mib(self.before_kib), "peak_rss_vmhwm_mib": mib(self.hwm_kib),
                "max_sampled_rss_mib": mib(self.max_sampled_kib), "rss_after_mib": mib(self.after_kib)}


# ----------------------------------------------------------------------------- the topology


def start_topology(workdir: Path, users: list) -> Topology:
    """The e2e tests' topology (tests/e2e/gateway/topology.py: the gateway with the Python proxy's
    environment in front of one pod per user, its own fake Auth2 and the pods' plugins' own), with
    ``users``' pods, each with our plugin and the JVM's defaults. Whatever started is in the
    topology (``stop_topology``), even when a start fails."""
    auth = FakeAuth2(workdir, "fake-gateway-auth2", [])
    pods_auth = FakeAuth2(workdir, "fake-pods-auth2", [])
    topo = Topology(workdir, TokenRegistry(), auth, pods_auth, {}, harness.free_port())
    auth.start()
    pods_auth.start()
    topo.pods = {u: make_pod(workdir, u, pods_auth.url, with_plugin=True, lean=False) for u in users}
    log(f"starting {len(users)} Spark Connect pods ({', '.join(users)}) in parallel")
    t0 = time.monotonic()
    harness.start_servers(list(topo.pods.values()), timeout=300)
    log(f"pods ready in {time.monotonic() - t0:.0f} s")
    topo.gateway = topo.new_gateway("gateway").start()
    pid = gateway_pid(topo.gateway)
    log(f"gateway ready on {topo.gateway.target} (PID {pid}, RSS {status_kib(pid, 'VmRSS') / 1024:.1f} MiB)")
    return topo


def stop_topology(topo: Topology) -> None:
    for part in [*topo.started, *topo.pods.values(), topo.auth, topo.pods_auth]:
        try:
            part.stop()
        except Exception as e:  # noqa: BLE001
            print(f"gateway_bench: stopping {part!r} failed: {e}", file=sys.stderr)


def paths(t: Topology, user: str, token: str, nginx=None) -> dict:
    """G through the gateway, D straight to the user's pod, and D2 straight to it again (the noise
    floor) or, with --nginx, N through nginx in front of it: three pyspark sessions."""
    pod = t.pods[user]
    out = {"G": session(t.gateway.url("localhost", token=token)),
           "D": session(pod.url("localhost", token=token))}
    if nginx:
        out["N"] = session(f"sc://localhost:{nginx.port}/;token={token}")
    else:
        out["D2"] = session(pod.url("localhost", token=token))
    reached = {k: pod_of(s) for k, s in out.items()}  # what each pod reports: the same one
    assert set(reached.values()) == {user}, reached
    return out


def proxies_cpu(t: Topology, nginx, fn):
    """``fn`` with the gateway's CPU time counted per path, and nginx's (--nginx); their reporters."""
    cpus = [GatewayCpu(gateway_pid(t.gateway))] + ([GatewayCpu(nginx.worker_pid(), "nginx")] if nginx else [])
    for c in cpus:
        fn = c.batch(fn)
    return fn, cpus


def timed_batch(fn, n: int):
    lat = []
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        lat.append(time.perf_counter_ns() - t0)
    return lat, time.perf_counter() - w0, time.process_time() - c0


def describe(sessions: dict) -> str:
    third = "N nginx (grpc_pass) in front of" if "N" in sessions else "D2 direct to"
    return f"G gateway, D direct to the pod, {third} the same pod"


# ----------------------------------------------------------------------------- 1. select 1


def w_select1(t: Topology, args, rng, nginx=None) -> dict:
    user = next(iter(t.pods))
    sessions = paths(t, user, t.token(user), nginx)
    try:
        assert [tuple(r) for r in sessions["G"].sql("select 1").collect()] == [(1,)]

        def query(s):
            return lambda: sessions[s].sql("select 1").collect()

        log(f"1. select 1: warm-up {args.select_warmup}/path, {args.rounds} rounds x {args.select_batch}")
        batch, cpus = proxies_cpu(t, nginx, lambda s: timed_batch(query(s), args.select_batch))
        out = run_interleaved(
            f'spark.sql("select 1").collect(), pyspark, sequential: {describe(sessions)}',
            list(sessions), args.rounds, batch, rng,
            warmup_fn=lambda s: timed_batch(query(s), args.select_warmup),
            pre_fn=lambda s: timed_batch(query(s), 5))
        for c in cpus:
            out |= c.report("query")
        return out
    finally:
        for s in sessions.values():
            s.stop()


# ----------------------------------------------------------------------------- 2. ~100 MB


def w_collect(t: Topology, args, rng, nginx=None) -> dict:
    user = next(iter(t.pods))
    sessions = paths(t, user, t.token(user), nginx)
    rows = args.collect_rows
    frames = {k: s.range(0, rows, 1, 4).selectExpr("id", "repeat(sha2(CAST(id AS STRING), 256), 16) AS s")
              for k, s in sessions.items()}
    sizes = []

    def fetch(k):
        def run():
            table = frames[k].toArrow()
            assert table.num_rows == rows, table.num_rows
            sizes.append(table.nbytes)
        return run

    try:
        for df in frames.values():  # computed once on the pod; every fetch reads the cache
            df.cache()
            assert df.count() == rows
        log(f"2. collect: {rows} rows, {args.collect_rounds} rounds, gateway RSS watched")
        m0 = t.gateway.metrics().value("kbase_gateway_response_bytes_total")
        batch, cpus = proxies_cpu(t, nginx, lambda k: timed_batch(fetch(k), 1))
        with Rss(gateway_pid(t.gateway)) as rss:
            out = run_interleaved(
                f"toArrow() of {rows} cached rows of ~1 KiB (~{rows // 1000} MB), pyspark: {describe(sessions)}",
                list(sessions), args.collect_rounds, batch, rng, warmup_fn=lambda k: timed_batch(fetch(k), 1))
        for c in cpus:
            out |= c.report("fetch")
        through = t.gateway.metrics().value("kbase_gateway_response_bytes_total") - m0
        out["arrow_table_mib"] = round(max(sizes) / 2**20, 1)
        out["gateway_response_mib_per_fetch"] = round(through / (args.collect_rounds + 1) / 2**20, 1)
        out["gateway_memory"] = rss.report()
        for df in frames.values():
            df.unpersist()
        return out
    finally:
        for s in sessions.values():
            s.stop()


# ----------------------------------------------------------------------------- 3. live streams


def sleeping_query(ms: int) -> str:
    return f"SELECT id, reflect('java.lang.Thread', 'sleep', CAST({ms} AS BIGINT)) AS slept FROM range(0, 1, 1, 1)"


def w_streams(t: Topology, args) -> dict:
    users = list(t.pods)[: args.stream_pods]
    per_pod = args.streams_per_pod
    total = per_pod * len(users)
    sleep_ms = int((args.hold_seconds + 300) * 1000)  # longer than the run needs; interrupted
    sessions = {u: str(uuid.uuid4()) for u in users}
    tokens = {u: [t.token(u) for _ in range(args.stream_tokens)] for u in users}
    stubs = Stubs()
    codes: dict = {}
    lock = threading.Lock()
    log(f"3. streams: {per_pod} per pod x {len(users)} pods = {total}, {args.stream_channels} client "
        f"connections, {args.stream_tokens} tokens per user")

    def stream(stub, user, token):
        req = base_pb2.ExecutePlanRequest(
            session_id=sessions[user], user_context=base_pb2.UserContext(user_id=user),
            operation_id=str(uuid.uuid4()),
            plan=base_pb2.Plan(root=relations_pb2.Relation(sql=relations_pb2.SQL(query=sleeping_query(sleep_ms)))))
        try:
            for _ in stub.ExecutePlan(req, metadata=bearer(token), timeout=sleep_ms / 1000 + 60):
                pass
            code = "OK"
        except grpc.RpcError as e:
            code = e.code().name
        with lock:
            codes[code] = codes.get(code, 0) + 1

    g = t.gateway
    threads = []
    try:
        conns = [stubs.stub(g.target) for _ in range(args.stream_channels)]
        live0 = g.metrics().value("kbase_gateway_live_streams")
        with Rss(gateway_pid(g)) as rss:
            for i in range(total):
                user = users[i % len(users)]
                token = tokens[user][(i // len(users)) % args.stream_tokens]
                th = threading.Thread(target=stream, args=(conns[i % len(conns)], user, token), daemon=True)
                th.start()
                threads.append(th)
            harness.wait_until(lambda: g.metrics().value("kbase_gateway_live_streams") - live0 >= total, 240, 0.5,
                               f"{total} live streams through the gateway")
            t_all = time.monotonic()
            time.sleep(args.hold_seconds)
            m = g.metrics()
            live = m.value("kbase_gateway_live_streams") - live0
            pod_conns = m.value("kbase_gateway_pod_connections")
            held = time.monotonic() - t_all
        assert live >= total, f"only {live} streams live at the end of the hold"
        lookups = sum(t.auth.count(tok) for u in users for tok in tokens[u])
    finally:
        # Ends every stream: each session's operations interrupted on its pod, through the gateway.
        for u in users:
            try:
                stubs.stub(g.target).Interrupt(
                    base_pb2.InterruptRequest(session_id=sessions[u], user_context=base_pb2.UserContext(user_id=u),
                                              interrupt_type=base_pb2.InterruptRequest.INTERRUPT_TYPE_ALL),
                    metadata=bearer(tokens[u][0]), timeout=30)
            except grpc.RpcError as e:
                print(f"interrupt of {u}'s session failed: {e.code().name}", file=sys.stderr)
        for th in threads:
            th.join(timeout=60)
        stubs.close()
    return {"name": f"{total} ExecutePlan streams live at once through the gateway, {per_pod} on each of "
                    f"{len(users)} pods, from {args.stream_channels} client connections",
            "live_streams_gauge": live, "pod_connections_gauge": pod_conns, "held_s": round(held, 1),
            "stream_statuses_after_interrupt": codes, "gateway_auth2_lookups": lookups,
            "gateway_memory": rss.report(), "loadavg": os.getloadavg()}


# ----------------------------------------------------------------------------- 5. stampede


def w_stampede(t: Topology, args) -> dict:
    out = {}
    user = next(iter(t.pods))
    try:
        for label, delay in (("stampede-delay", 50), ("stampede-nodelay", None)):
            token = t.token(user)
            t.auth.fault("delay", delay_ms=delay) if delay else t.auth.fault("none")
            r = stampede(t.gateway.target, bearer(token), args.stampede)
            r["gateway_auth2_lookups"] = t.auth.count(token)
            r["pod_auth2_lookups"] = t.pods_auth.count(token)
            r["auth2_delay_ms"] = delay or 0
            out[label] = r
    finally:
        t.auth.fault("none")
    log(f"5. stampede: {args.stampede} first calls at once with one token: "
        + "; ".join(f"{k}: {v['gateway_auth2_lookups']} lookup(s), {v['statuses']}" for k, v in out.items()))
    return out


# ----------------------------------------------------------------------------- 6. a slow miss


def w_miss(t: Topology, args, rng) -> dict:
    *steady_users, new_user = list(t.pods)[: args.miss_pods]
    assert steady_users, "--miss-pods needs at least 2 pods"
    token = {u: t.token(u) for u in steady_users}
    # One never-seen token per newcomer call: at most one per Auth2 delay per thread.
    n_fresh = int(args.miss_rounds * args.miss_phase_seconds * 1000 / args.miss_delay_ms * args.miss_threads) + 50
    fresh = iter([t.token(new_user) for _ in range(n_fresh)])  # shared by the newcomer's threads
    steady = {u: Stubs() for u in steady_users}
    stubs = {u: s.stub(t.gateway.target) for u, s in steady.items()}
    newcomer = Stubs()
    new_stub = newcomer.stub(t.gateway.target)
    new_calls: list = []
    try:
        for u in steady_users:  # each steady user's token is cached, the connections warm
            for _ in range(200):
                stubs[u].Config(config_request(), metadata=bearer(token[u]), timeout=30)
        new_stub.Config(config_request(), metadata=bearer(next(fresh)), timeout=30)  # dials the newcomer's pod
        t.auth.fault("delay", delay_ms=args.miss_delay_ms)

        def newcomer_calls(stop):
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    new_stub.Config(config_request(), metadata=bearer(next(fresh)), timeout=30)
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                new_calls.append((time.perf_counter() - t0, code))

        def phase(arm):
            """Every steady user's calls for one phase, with the newcomer's misses in M."""
            stop, lat = threading.Event(), {u: [] for u in steady_users}
            before = t.auth.total()
            misses = [threading.Thread(target=newcomer_calls, args=(stop,), daemon=True)
                      for _ in range(args.miss_threads if arm == "M" else 0)]
            for th in misses:
                th.start()
            if misses:  # the first miss is waiting on Auth2 when the steady calls start
                harness.wait_until(lambda: t.auth.total() > before, 10, 0.005, "the newcomer's first lookup")

            def steady_calls(u):
                end = time.monotonic() + args.miss_phase_seconds
                while time.monotonic() < end:
                    t0 = time.perf_counter_ns()
                    stubs[u].Config(config_request(), metadata=bearer(token[u]), timeout=30)
                    lat[u].append(time.perf_counter_ns() - t0)

            c0, w0 = time.process_time(), time.perf_counter()
            users = [threading.Thread(target=steady_calls, args=(u,), daemon=True) for u in steady_users]
            for th in users:
                th.start()
            for th in users:
                th.join(args.miss_phase_seconds + 60)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            stop.set()
            for th in misses:
                th.join(60)
            return [x for u in steady_users for x in lat[u]], wall, cpu

        log(f"6. miss: {', '.join(steady_users)} call steadily; M: {new_user}'s new tokens wait "
            f"{args.miss_delay_ms} ms on the gateway's Auth2; {args.miss_rounds} rounds x {args.miss_phase_seconds} s")
        out = run_interleaved(
            f"steady users' raw Config calls through the gateway (one thread each, {len(steady_users)} users) "
            f"with (M) and without (N, N2) another user's first calls waiting {args.miss_delay_ms} ms on Auth2",
            ["M", "N", "N2"], args.miss_rounds, phase, rng)
    finally:
        t.auth.fault("none")
        for s in [*steady.values(), newcomer]:
            s.close()
    waits = sorted(d for d, _ in new_calls)
    out["newcomer"] = {"calls": len(new_calls), "statuses": {c: sum(1 for _, x in new_calls if x == c)
                                                           for c in {x for _, x in new_calls}},
                       "p50_ms": round(pct(waits, 50) * 1e3, 1) if waits else None,
                       "max_ms": round(waits[-1] * 1e3, 1) if waits else None}
    return out


# ----------------------------------------------------------------------------- the run


def run_workloads(t: Topology, args, rng, nginx=None) -> dict:
    """``args.workloads`` against the topology's gateway and pods (and ``nginx`` in front of the
    first pod, with --nginx); each one's results."""
    w = {}
    if "select1" in args.workloads:
        w["select1"] = w_select1(t, args, rng, nginx)
    if "collect" in args.workloads:
        w["collect"] = w_collect(t, args, rng, nginx)
    if "stampede" in args.workloads:
        w["stampede"] = w_stampede(t, args)
    if "miss" in args.workloads:
        w["miss"] = w_miss(t, args, rng)
    if "streams" in args.workloads:
        w["streams"] = w_streams(t, args)
    return w


def pods_needed(args) -> list:
    n = 1
    if "miss" in args.workloads:
        n = max(n, args.miss_pods)
    if "streams" in args.workloads:
        n = max(n, args.stream_pods)
    return list(USERS[:n])


def main(argv=None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)

    watchdog = bound_run("gateway_bench", args.max_seconds)
    workdir = harness.new_work_dir("gateway-bench", KEEP_RUNS)
    log(f"work directory (logs): {workdir}; load average {os.getloadavg()}; cores {os.cpu_count()}")
    result = {"benchmark": "scripts/gateway_bench.py", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "args": vars(args) | {"seed": seed}, "loadavg_at_start": os.getloadavg(),
              "gateway": str(harness.find_gateway()), "jar": os.path.basename(os.environ["KBASE_E2E_JAR"])}
    topo = nginx = None
    ok = False
    try:
        topo = start_topology(workdir, pods_needed(args))
        if args.nginx:
            pod = topo.pods[next(iter(topo.pods))]
            nginx = harness.NginxProxy(workdir, "nginx", pod.target, None).start()
            log(f"nginx (reference proxy) on 127.0.0.1:{nginx.port} in front of {pod.target}")
        result["workloads"] = run_workloads(topo, args, rng, nginx)
        result["gateway_rss_at_end_mib"] = round(status_kib(gateway_pid(topo.gateway), "VmRSS") / 1024, 1)
        for name, p in topo.pods.items():
            if not p.alive():
                raise RuntimeError(f"pod {name} died during the run: see {p.log_path}")
        ok = True
    finally:
        harness.close_channels()
        if nginx is not None:
            nginx.stop()
        if topo is not None:
            stop_topology(topo)
        watchdog.cancel()
    result["loadavg_at_end"] = os.getloadavg()
    out = write_json(args.out, result)
    report(result)
    log(f"JSON: {out}")
    return 0 if ok else 1


def report(r: dict) -> None:
    print(f"\nGateway benchmark (seed {r['args']['seed']}; load average at start "
          f"{r['loadavg_at_start'][0]:.2f}, at end {r['loadavg_at_end'][0]:.2f})")
    for key in ("select1", "collect", "miss"):
        x = r["workloads"].get(key)
        if not x:
            continue
        print(f"\n{key}: {x['name']}\n   {x['rounds']} rounds; load average {x['loadavg1_before']} -> "
              f"{x['loadavg1_after']}")
        print(f"   {'path':<6}{'calls':>8}{'p50 ms':>11}{'p99 ms':>11}{'round p50':>11}{'round p99':>11}")
        for s, v in x["servers"].items():
            print(f"   {s:<6}{v['calls']:>8}{v['p50_us'] / 1e3:>11.3f}{v['p99_us'] / 1e3:>11.3f}"
                  f"{v['round_p50_median_us'] / 1e3:>11.3f}{v['round_p99_median_us'] / 1e3:>11.3f}")
        for k, v in x["ratios_median_over_rounds"].items():
            print(f"   {k:<6} p50 {v['p50']:.3f}  p99 {v['p99']:.3f} (pooled {v['p99_pooled']:.3f})")
        for extra in ("gateway_cpu_ms_per_query", "gateway_cpu_ms_per_fetch", "nginx_cpu_ms_per_query",
                      "nginx_cpu_ms_per_fetch", "gateway_memory", "arrow_table_mib",
                      "gateway_response_mib_per_fetch", "newcomer"):
            if extra in x:
                print(f"   {extra}: {x[extra]}")
    if "stampede" in r["workloads"]:
        print("\nstampede:")
        for k, v in r["workloads"]["stampede"].items():
            print(f"   {k}: {v['calls']} calls, statuses {v['statuses']}, gateway Auth2 lookups "
                  f"{v['gateway_auth2_lookups']} (pods' {v['pod_auth2_lookups']}), "
                  f"{v['started_before_first_answer']} started before the first answer")
    if "streams" in r["workloads"]:
        s = r["workloads"]["streams"]
        print(f"\nstreams: {s['name']}\n   live_streams {s['live_streams_gauge']:.0f}, pod connections "
              f"{s['pod_connections_gauge']:.0f}, held {s['held_s']} s; memory {s['gateway_memory']}; "
              f"statuses after the interrupt {s['stream_statuses_after_interrupt']}; load average {s['loadavg']}")


if __name__ == "__main__":
    sys.exit(main())
