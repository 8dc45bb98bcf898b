"""Auth2 failures: UNAVAILABLE (never allow), the server stays up, and it recovers."""

from __future__ import annotations

import time

import pytest

import harness
from harness import bearer, config_rpc, expect

REQUEST_TIMEOUT_S = 2.0  # spark.kbase.auth.requestTimeout on the `short` server

FAULTS = [
    ("refuse", None),
    ("delay", 4_000),   # slower than requestTimeout=2s
    ("status503", None),
    ("html502", None),
    ("malformed", None),
    ("nouser", None),
]


@pytest.mark.parametrize("mode,delay_ms", FAULTS, ids=[m for m, _ in FAULTS])
def test_auth2_fault_is_unavailable_then_recovers(short, tokens, clean_faults, mode, delay_ms):
    t = short.fake.add_token(tokens.new(), "alice", customroles=["spark_user"])
    short.fake.fault(mode, delay_ms)
    o = config_rpc(short.target, bearer(t), timeout=30)
    expect(o, "UNAVAILABLE", "KBase auth service unavailable", secrets=[t])
    assert o.elapsed < REQUEST_TIMEOUT_S + 3.0, f"denial took too long: {o}"
    # A second call: still UNAVAILABLE (failures are not turned into answers), never OK.
    o2 = config_rpc(short.target, bearer(t), timeout=30)
    expect(o2, "UNAVAILABLE", "KBase auth service unavailable", secrets=[t])
    assert short.server.alive(), "the Spark server died"

    short.fake.fault("none")

    def recovered():
        o = config_rpc(short.target, bearer(t), timeout=30)
        assert o.name in ("OK", "UNAVAILABLE"), str(o)
        return o if o.name == "OK" else None

    harness.wait_until(recovered, 15, 0.3, f"recovery after fault {mode}")


@pytest.mark.matrix
def test_cached_tokens_survive_an_outage(short, tokens, clean_faults):
    """A token validated a moment ago keeps working while Auth2 is down (cache hit)."""
    t = short.fake.add_token(tokens.new(), "alice", customroles=["spark_user"])
    expect(config_rpc(short.target, bearer(t)), "OK")
    short.fake.fault("refuse")
    expect(config_rpc(short.target, bearer(t)), "OK")
    # ...while a new token cannot be validated.
    t2 = short.fake.add_token(tokens.new(), "alice", customroles=["spark_user"])
    expect(config_rpc(short.target, bearer(t2)), "UNAVAILABLE", "KBase auth service unavailable")


def test_no_token_needs_no_auth2(short, clean_faults):
    """Local decisions (no / malformed token) do not depend on Auth2 being up."""
    short.fake.fault("refuse")
    expect(config_rpc(short.target, []), "UNAUTHENTICATED", "missing KBase token")
    expect(config_rpc(short.target, [("x-kbase-token", "a b")]), "UNAUTHENTICATED", "malformed")


def test_unavailable_is_fast_under_load(short, tokens, clean_faults):
    """16 concurrent new tokens against a slow Auth2: all UNAVAILABLE, bounded by the timeout."""
    short.fake.fault("delay", 10_000)
    toks = [short.fake.add_token(tokens.new(), "alice", customroles=["spark_user"]) for _ in range(16)]
    from harness import _stub, config_request

    stub = _stub(short.target, None)
    t0 = time.monotonic()
    futs = [stub.Config.future(config_request(), metadata=bearer(t), timeout=30) for t in toks]
    codes = []
    for f in futs:
        try:
            f.result()
            codes.append("OK")
        except Exception as e:  # noqa: BLE001
            codes.append(e.code().name)
    elapsed = time.monotonic() - t0
    assert codes == ["UNAVAILABLE"] * 16, codes
    assert elapsed < REQUEST_TIMEOUT_S + 4.0, f"16 slow validations took {elapsed:.1f}s"


def test_fail_fast_after_repeated_failures(short, tokens, clean_faults):
    """failFast.threshold=5 (default), cooldown=1s on `short`: after 5 failed Auth2 exchanges
    new tokens are answered UNAVAILABLE without asking Auth2; once the cool-down is over and
    Auth2 is back, validation works again."""
    def new_token():
        return short.fake.add_token(tokens.new(), "alice", customroles=["spark_user"])

    # Start from a closed breaker: a successful exchange resets the failure count.
    harness.wait_until(lambda: config_rpc(short.target, bearer(new_token())).name == "OK",
                       15, 0.3, "a successful validation")
    short.fake.fault("status503")
    for _ in range(5):
        t = new_token()
        expect(config_rpc(short.target, bearer(t)), "UNAVAILABLE", "KBase auth service unavailable")
        assert short.fake.count(t) == 1
    t6 = new_token()
    o = expect(config_rpc(short.target, bearer(t6)), "UNAVAILABLE", "KBase auth service unavailable")
    assert short.fake.count(t6) == 0, f"the breaker should have answered without Auth2: {o}"
    short.fake.fault("none")
    time.sleep(1.2)
    expect(config_rpc(short.target, bearer(t6)), "OK")
