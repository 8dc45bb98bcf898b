"""Auth2 failures: UNAVAILABLE (never allow), the server stays up, and it recovers."""

from __future__ import annotations

import pytest

import harness
from harness import bearer, concurrent_rpcs, config_rpc, expect

REQUEST_TIMEOUT_S = 2.0  # spark.kbase.auth.requestTimeout on the `short` server
# A bound on how long a denial may take: the request timeout plus generous slack for a loaded
# machine. The delay fault is far beyond it, so only the plugin's timeout can end the wait in time.
DENIAL_BOUND_S = REQUEST_TIMEOUT_S + 3.0
SLOW_AUTH2_MS = 20_000

FAULTS = [
    ("refuse", None),
    ("delay", SLOW_AUTH2_MS),
    ("status503", None),
    ("html502", None),
    ("malformed", None),
    ("nouser", None),
    ("status400html", None),  # a proxy's or WAF's 400: not Auth2 saying "invalid token"
    ("status400json", None),
    ("drop_token", None),  # Auth2's own 400 "no token": a proxy dropped the header, the token is not judged
    ("redirect", None),
]


@pytest.mark.parametrize("mode,delay_ms", FAULTS, ids=[m for m, _ in FAULTS])
def test_auth2_fault_is_unavailable_then_recovers(short, tokens, clean_faults, mode, delay_ms):
    t = short.owner_token(tokens)
    redirected_before = short.fake.redirected()
    short.fake.fault(mode, delay_ms)
    o = config_rpc(short.target, bearer(t), timeout=30)
    expect(o, "UNAVAILABLE", "KBase auth service unavailable", secrets=[t])
    assert o.elapsed < DENIAL_BOUND_S, f"denial not bounded by requestTimeout={REQUEST_TIMEOUT_S}s: {o}"
    # A second call: still UNAVAILABLE (failures are not turned into answers), never OK.
    o2 = config_rpc(short.target, bearer(t), timeout=30)
    expect(o2, "UNAVAILABLE", "KBase auth service unavailable", secrets=[t])
    assert short.server.alive(), "the Spark server died"
    # A redirect is never followed: the token never reaches the redirect target.
    assert short.fake.redirected() == redirected_before, "the plugin followed Auth2's redirect"

    short.fake.fault("none")

    def recovered():
        o = config_rpc(short.target, bearer(t), timeout=30)
        assert o.name in ("OK", "UNAVAILABLE"), str(o)
        return o if o.name == "OK" else None

    harness.wait_until(recovered, 15, 0.3, f"recovery after fault {mode}")


@pytest.mark.matrix
def test_cached_tokens_survive_an_outage(short, tokens, clean_faults):
    """A token validated a moment ago keeps working while Auth2 is down (cache hit)."""
    t = short.owner_token(tokens)
    expect(config_rpc(short.target, bearer(t)), "OK")
    short.fake.fault("refuse")
    expect(config_rpc(short.target, bearer(t)), "OK")
    # ...while a new token cannot be validated.
    t2 = short.owner_token(tokens)
    expect(config_rpc(short.target, bearer(t2)), "UNAVAILABLE", "KBase auth service unavailable")


def test_no_token_needs_no_auth2(short, clean_faults):
    """Local decisions (no / malformed token) do not depend on Auth2 being up."""
    short.fake.fault("refuse")
    expect(config_rpc(short.target, []), "UNAUTHENTICATED", "missing KBase token")
    expect(config_rpc(short.target, [("x-kbase-token", "a b")]), "UNAUTHENTICATED", "malformed")


def test_unavailable_is_bounded_under_load(short, tokens, clean_faults):
    """16 concurrent new tokens against an Auth2 slower than requestTimeout: every one reaches
    Auth2, every one is UNAVAILABLE because Auth2 did not answer in time (not the new-token
    budget), all within the timeout's bound (not the 20 s Auth2 delay)."""
    short.fake.fault("delay", SLOW_AUTH2_MS)
    toks = [short.owner_token(tokens) for _ in range(16)]
    outs = concurrent_rpcs(short.target, [bearer(t) for t in toks], timeout=30)
    for o in outs:
        expect(o, "UNAVAILABLE", "KBase auth service unavailable", secrets=toks)
    assert [short.fake.count(t) for t in toks] == [1] * 16, "every token must have reached Auth2"
    slowest = max(o.elapsed for o in outs)
    assert slowest < DENIAL_BOUND_S + 2.0, f"16 slow validations took {slowest:.1f}s"


def test_fail_fast_after_repeated_failures(short, tokens, clean_faults):
    """failFast.threshold=5 (default), cooldown=1s on `short`: after 5 failed Auth2 exchanges
    new tokens are answered UNAVAILABLE without asking Auth2; once the cool-down is over and
    Auth2 is back, validation works again."""
    def new_token():
        return short.owner_token(tokens)

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
    # Once the 1 s cool-down is over, the same token is validated (bounded wait, no guessed sleep).
    harness.wait_until(lambda: config_rpc(short.target, bearer(t6)).name == "OK", 10, 0.2,
                       "validation after the cool-down")
    assert short.fake.count(t6) == 2, "one validation: /api/V2/token and /api/V2/me (roles required)"
