"""Soak: many decisions with rotating tokens through real Spark Connect; the server's resident
memory stops growing once the cache is full (SPEC section 6). Marked ``soak``: run with
``scripts/test.sh --slow`` or ``pytest tests/e2e -m soak -s``.

The JVM heap is fixed (-Xms = -Xmx) so that heap growth does not hide or fake a native leak.
Phases of N decisions each, cycling through fresh valid tokens (cache entries), fresh invalid
tokens (negative entries) and repeats (hits); RSS is sampled after each phase. The cache holds
at most 2000 entries, so after the first phases every further phase should leave RSS flat
(asserted: less than 40 MB between the end of phase 3 and the end).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from harness import FakeAuth2, SparkServer, _stub, bearer, config_request, start_servers

# 10^6 decisions by default (about 5 minutes here); KBASE_SOAK_DECISIONS to change.
DECISIONS = int(os.environ.get("KBASE_SOAK_DECISIONS", "1000000"))
PHASES = 10
PER_PHASE = max(1, DECISIONS // PHASES)
WINDOW = 16          # RPCs in flight at once (below maxConcurrentRequests=32)
VALID_PER_PHASE = 3_000


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def java_pid(root: int) -> int:
    """The JVM under `timeout` / spark-submit (the process whose command is java)."""
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if cmd.endswith(b"/java"):
            return pid
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids = (task / "children").read_text().split()
            todo.extend(int(k) for k in kids)
    raise RuntimeError(f"no java process under {root}")


def _count(future, codes: dict) -> None:
    """Waits for one RPC future and counts its status code."""
    try:
        future.result()
        c = "OK"
    except Exception as e:  # noqa: BLE001
        c = e.code().name
    codes[c] = codes.get(c, 0) + 1


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_rss_flat_with_rotating_tokens(workdir, tokens, all_servers):
    fake = FakeAuth2(workdir, "fake-soak", []).start()
    s = SparkServer(workdir, "soak", {
        "spark.kbase.auth.url": fake.url,
        "spark.kbase.auth.owner": "alice",
        "spark.kbase.auth.cache.maxEntries": "2000",
        "spark.kbase.auth.cache.invalidTtl": "5s",
        "spark.driver.extraJavaOptions": f"-Xms768m -Djava.io.tmpdir={workdir}",
    })
    all_servers.append(s)
    try:
        start_servers([s])
        pid = java_pid(s.proc.pid)
        stub = _stub(s.target, None)
        samples = []
        seq = 0
        for phase in range(PHASES):
            valid = [f"SOAKVALID{phase:02d}{i:06d}XXXXXXXXXXXXXXX" for i in range(VALID_PER_PHASE)]
            for i in range(0, len(valid), 500):
                fake._call("POST", "/tokens", [{"token": t, "user": "alice"} for t in valid[i:i + 500]])
            t0 = time.monotonic()
            inflight = []
            codes = {}
            for n in range(PER_PHASE):
                seq += 1
                k = n % 10
                if k < 3:
                    tok = valid[n % VALID_PER_PHASE]           # new, then repeated: allowed
                elif k < 6:
                    tok = f"SOAKBAD{seq:012d}XXXXXXXXXXXXX"     # always new: invalid
                else:
                    tok = valid[(n * 7) % VALID_PER_PHASE]     # mostly hits
                inflight.append(stub.Config.future(config_request(), metadata=bearer(tok), timeout=30))
                if len(inflight) >= WINDOW:
                    _count(inflight.pop(0), codes)
            for f in inflight:
                _count(f, codes)
            samples.append({"phase": phase, "rss_mb": round(rss_kb(pid) / 1024, 1),
                            "secs": round(time.monotonic() - t0, 1), "codes": codes})
            print(json.dumps(samples[-1]), flush=True)
        (workdir / "soak-rss.json").write_text(json.dumps(samples, indent=2))
        assert s.alive()
        assert all(set(x["codes"]) <= {"OK", "UNAUTHENTICATED"} for x in samples), samples
        growth = samples[-1]["rss_mb"] - samples[2]["rss_mb"]
        assert growth < 40, f"RSS grew {growth:.1f} MB over the last {PHASES - 3} phases: {samples}"
        print(f"RSS growth over phases 3..{PHASES}: {growth:.1f} MB "
              f"({(PHASES - 3) * PER_PHASE} decisions)")
    finally:
        s.stop()
        fake.stop()
