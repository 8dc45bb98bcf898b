#!/usr/bin/env python3
"""What the owner feels through real Spark Connect at the end of every cache window, and under a
flood of made-up tokens: the figures of docs/PERFORMANCE.md ("The owner at window boundaries",
"A flood of made-up tokens", "A new owner token under the flood").

Run from the repository root on an otherwise idle machine (needs the jar, the fake Auth2 and
the venv, as for the e2e tests; `scripts/test.sh --quick` builds them):

    .venv/bin/python scripts/owner_bench.py [--minutes 1] [--flood-seconds 30] [--workloads windows,flood]

Servers (one fake Auth2 answering every lookup after ``--auth2-delay-ms``, the owner's token
with a ``cachefor`` of ``--window-ms``):

* ``R`` - the plugin with refresh ahead (default settings);
* ``O`` - the plugin with ``cache.refreshAhead=0ms`` (every window ends with a waiting call);
* ``N`` - no interceptor (the floor).

1. ``windows``: sequential raw ``Config`` calls by the owner, in slices of ``--slice-s`` per
   server taken in turn (interleaved, so machine drift hits all alike) until each server had
   ``--minutes``; per server p50/p99/max latency, calls slower than the Auth2 delay, and Auth2
   lookups of the owner's token. The first call of each slice comes after the server sat idle
   for two slices (longer than a window): an owner coming back after a pause waits once whatever
   the settings, so those calls are reported apart.
2. ``flood``: on ``R``, ``--flood-threads`` client threads send random well-formed tokens for
   ``--flood-seconds`` while the owner calls steadily; then the owner alone for as long. Flood
   calls/s and statuses, Auth2 lookups/s, owner p50/p99/max with and without the flood, and the
   plugin's log lines written during the flood. Meanwhile, ``--new-token-probes`` times the
   owner logs in again: in a pyspark child process, a new session and one config read with the
   owner's known token (the reference), then the same with a token the plugin has never seen
   (pyspark's own retries of UNAVAILABLE included; at most ``--probe-timeout`` s); three more
   after the flood. ``--flood-repeats 2`` makes the flood send each made-up token twice, as an
   adversary imitating a client's retries would.

Every process listens on 127.0.0.1 and is stopped by PID at the end (tests/e2e/harness.py).
Tokens never appear in the output.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "e2e"))


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--minutes", type=float, default=1.0, help="owner calls per server, workload 1")
    ap.add_argument("--slice-s", type=float, default=15.0, help="interleaving slice, workload 1")
    ap.add_argument("--window-ms", type=int, default=2000, help="the owner token's cachefor")
    ap.add_argument("--auth2-delay-ms", type=int, default=100, help="fake Auth2 answer delay")
    ap.add_argument("--flood-seconds", type=float, default=30.0)
    ap.add_argument("--flood-threads", type=int, default=8)
    ap.add_argument("--flood-repeats", type=int, default=1,
                    help="times the flood sends each made-up token (1: once, as a scan does; 2: an adversary "
                         "imitating a client's retries)")
    ap.add_argument("--new-token-probes", type=int, default=5, help="new owner tokens tried during the flood")
    ap.add_argument("--probe-timeout", type=float, default=120.0, help="bound on one probe, seconds")
    ap.add_argument("--workloads", default="windows,flood", help="which workloads to run, comma-separated")
    ap.add_argument("--max-seconds", type=int, default=900, help="bound on the whole run")
    return ap.parse_args()


ARGS = parse_args()
os.environ.setdefault("KBASE_E2E_MAX_SERVER_SECS", str(ARGS.max_seconds + 120))

import harness  # noqa: E402
from harness import FakeAuth2, SparkServer, TokenRegistry, bearer, config_rpc  # noqa: E402


def stats(latencies: list) -> str:
    v = sorted(latencies)
    if not v:
        return "no calls"
    p = lambda q: v[min(len(v) - 1, int(q * len(v)))] * 1000  # noqa: E731
    return f"n={len(v)} p50={p(0.5):.2f} ms p99={p(0.99):.2f} ms max={v[-1] * 1000:.1f} ms"


def timed_calls(target: str, meta: list, seconds: float, sink: list, codes: dict) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        o = config_rpc(target, meta, timeout=30)
        sink.append(o.elapsed)
        codes[o.name] = codes.get(o.name, 0) + 1


def main() -> int:
    threading.Timer(ARGS.max_seconds, lambda: (harness.stop_all(), os._exit(3))).start()
    work = harness.new_work_dir("owner-bench", 3)
    tokens = TokenRegistry()
    owner = tokens.new()
    fake = FakeAuth2(work, "fake", [{"token": owner, "user": "alice", "cachefor": ARGS.window_ms}]).start()
    plugin = {"spark.kbase.auth.url": fake.url, "spark.kbase.auth.owner": "alice"}
    servers = {
        "R": SparkServer(work, "R", dict(plugin)),
        "O": SparkServer(work, "O", {**plugin, "spark.kbase.auth.cache.refreshAhead": "0ms"}),
        "N": SparkServer(work, "N", {}, with_plugin=False),
    }
    try:
        harness.start_servers(list(servers.values()))
        for s in servers.values():  # warm-up, and the owner's first validation (no delay yet)
            for _ in range(500):
                config_rpc(s.target, bearer(owner))
        fake.fault("delay", ARGS.auth2_delay_ms)
        delay_s = ARGS.auth2_delay_ms / 1000
        workloads = set(ARGS.workloads.split(","))
        if "windows" in workloads:
            windows(servers, owner, fake, delay_s)
        if "flood" in workloads:
            flood(servers["R"], owner, fake, tokens)
    finally:
        harness.close_channels()
        harness.stop_all()
    os._exit(0)


def windows(servers: dict, owner: str, fake, delay_s: float) -> None:
    print(f"1. windows: owner calls, {ARGS.window_ms} ms cache window, Auth2 answers in "
          f"{ARGS.auth2_delay_ms} ms, {ARGS.minutes} min per server, {ARGS.slice_s} s slices")
    lat = {k: [] for k in servers}
    first = {k: [] for k in servers}
    codes = {k: {} for k in servers}
    before = fake.count(owner)
    spent = 0.0
    while spent < ARGS.minutes * 60:
        for k, s in servers.items():
            part: list = []
            timed_calls(s.target, bearer(owner), ARGS.slice_s, part, codes[k])
            first[k].append(part[0])
            lat[k].extend(part[1:])
        spent += ARGS.slice_s
    lookups = fake.count(owner) - before
    for k in servers:
        slow = sum(1 for x in lat[k] if x >= delay_s)
        firsts = ", ".join(f"{x * 1000:.0f}" for x in first[k])
        print(f"   {k}: {stats(lat[k])}; calls >= {ARGS.auth2_delay_ms} ms: {slow}; statuses {codes[k]}; "
              f"first call of each slice (ms): {firsts}")
    print(f"   Auth2 lookups of the owner's token (R and O together): {lookups}")


def new_owner_probe(server, owner: str, fake, tokens) -> tuple:
    """The owner logs in again: in one pyspark child process, a new session and one config read
    with the owner's known token (the reference), then the same with a token the plugin has
    never seen. Their verdicts, and the Auth2 lookups of the new token."""
    relogin = fake.add_token(tokens.new(), "alice")
    known, new = harness.pyspark_clients([server.url(token=owner), server.url(token=relogin)],
                                         conf_only=True, timeout=ARGS.probe_timeout)
    return known, new, fake.count(relogin)


def probe_text(v: dict) -> str:
    if v["ok"]:
        return f"{v['seconds']:.2f}"
    return "none within the bound" if v.get("timed_out") else f"failed after {v['seconds']:.1f}"


def probes_text(probes: list) -> str:
    return (f"never-seen token {', '.join(probe_text(n) for _, n, _ in probes)} s; "
            f"known token {', '.join(probe_text(k) for k, _, _ in probes)} s")


def flood(r, owner: str, fake, tokens) -> None:
    print(f"2. flood on R: {ARGS.flood_threads} threads of random tokens, each sent {ARGS.flood_repeats}x, for "
          f"{ARGS.flood_seconds} s; {ARGS.new_token_probes} new owner tokens through pyspark meanwhile")
    config_rpc(r.target, bearer(owner))  # R sat idle past its window: the one waiting call, unmeasured
    log_before = len(r.log_text().splitlines())
    fake.reset()
    with_flood: list = []
    owner_codes: dict = {}
    probes: list = []
    with harness.TokenFlood(r.target, tokens, threads=ARGS.flood_threads, repeats=ARGS.flood_repeats) as flood:
        steady = threading.Thread(target=timed_calls, daemon=True,
                                  args=(r.target, bearer(owner), ARGS.flood_seconds, with_flood, owner_codes))
        steady.start()
        time.sleep(3)  # the budget's burst is long spent
        for _ in range(ARGS.new_token_probes):
            probes.append(new_owner_probe(r, owner, fake, tokens))
        steady.join(ARGS.flood_seconds + 60)
    secs, flood_codes = flood.seconds, flood.codes
    flood_lookups = fake.total() - fake.count(owner) - sum(n for _, _, n in probes)
    lines = [ln for ln in r.log_text().splitlines()[log_before:] if "KBase auth" in ln]
    alone: list = []
    timed_calls(r.target, bearer(owner), ARGS.flood_seconds, alone, owner_codes)
    quiet = [new_owner_probe(r, owner, fake, tokens) for _ in range(3)]
    n_flood = sum(flood_codes.values())
    print(f"   flood: {n_flood} calls in {secs:.1f} s = {n_flood / secs:.0f}/s; statuses {flood_codes}")
    print(f"   Auth2 lookups of flood tokens: {flood_lookups} = {flood_lookups / secs:.1f}/s "
          f"(budget: 20 + 10/s = {20 + 10 * secs:.0f})")
    print(f"   owner with the flood:    {stats(with_flood)}")
    print(f"   owner without the flood: {stats(alone)}; owner statuses {owner_codes}")
    print(f"   plugin log lines during the flood: {len(lines)} ({len(lines) / secs:.1f}/s)")
    print("   the owner logs in again: a new pyspark session's first config read (pyspark's retries included)")
    print(f"     during the flood: {probes_text(probes)}")
    print(f"     without the flood: {probes_text(quiet)}")


if __name__ == "__main__":
    sys.exit(main())
