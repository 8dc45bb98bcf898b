"""Token validation at the gateway (GATEWAY.md §1 rows "token", "cache", "MFA", "Auth2 down",
"metadata"), through raw gRPC (pyspark's generated stubs) for exact statuses and trailers. The
gateway's Auth2 fake counts only the gateway's lookups (the pods have their own)."""

from __future__ import annotations

import time

import pytest

import harness
from harness import bearer, concurrent_config_rpcs, config_rpc, expect, kbase

from .topology import PLAIN_USER


@pytest.mark.parametrize("meta", [
    lambda t: [("authorization", f"Bearer {t}")],
    lambda t: [("authorization", f"bearer {t}")],
    lambda t: [("x-kbase-token", t)],
    lambda t: [("authorization", f"Bearer {t}"), ("x-kbase-token", t)],
    lambda t: [("x-kbase-token", t), ("x-kbase-token", t)],
], ids=["bearer", "bearer-lowercase", "x-kbase-token", "both-same", "x-kbase-repeated-same"])
def test_gateway_token_headers(gw, meta):
    """`authorization: Bearer` is accepted (the Python proxy refuses it), as `x-kbase-token`."""
    expect(config_rpc(gw.gateway.target, meta(gw.t["alice"])), "OK")


@pytest.mark.parametrize("meta", [
    lambda a, b: [("authorization", f"Bearer {a}"), ("x-kbase-token", b)],
    lambda a, b: [("x-kbase-token", a), ("x-kbase-token", b)],
    lambda a, b: [("authorization", f"Bearer {a}"), ("authorization", f"Bearer {b}")],
    lambda a, b: [("x-kbase-token", a), ("authorization", f"Bearer {a}"), ("x-kbase-token", b)],
], ids=["bearer-vs-x-kbase", "x-kbase-repeated", "bearer-repeated", "x-kbase-repeated-around-bearer"])
def test_gateway_ambiguous_tokens(gw, tokens, meta):
    """Two different tokens in one call, in any header combination: UNAUTHENTICATED, with empty
    trailers, before asking Auth2 about either."""
    a, b = gw.t["alice"], tokens.new()
    before = gw.auth.total()
    expect(config_rpc(gw.gateway.target, meta(a, b)), "UNAUTHENTICATED", "ambiguous", secrets=[a, b])
    assert gw.auth.total() == before


def test_gateway_no_token(gw):
    before = gw.auth.total()
    expect(config_rpc(gw.gateway.target, []), "UNAUTHENTICATED", "missing KBase token", "x-kbase-token=")
    assert gw.auth.total() == before


def test_gateway_invalid_token(gw, tokens):
    bad = tokens.new()
    expect(config_rpc(gw.gateway.target, kbase(bad)), "UNAUTHENTICATED", "invalid or revoked", secrets=[bad])
    assert gw.auth.count(bad) == 1


@pytest.mark.parametrize("who", ["alice_nomfa", "carol_mfa_unknown"])
def test_gateway_mfa_required(gw, who):
    """REQUIRE_MFA=true: a token made without MFA, or one Auth2 says nothing about, is refused."""
    t = gw.t[who]
    expect(config_rpc(gw.gateway.target, bearer(t)), "PERMISSION_DENIED", "MFA", secrets=[t])


def test_gateway_mfa_exempt_user(gw):
    """bob is in MFA_EXEMPT_USERS: his token without MFA passes (and reaches his pod, whose own
    plugin does not ask for MFA)."""
    expect(config_rpc(gw.gateway.target, bearer(gw.t["bob"])), "OK")
    assert gw.gateway.access_lines(user="bob", status="OK")


@pytest.mark.parametrize("mode", ["refuse", "status503"])
def test_gateway_auth2_down_is_unavailable(gw, mode):
    """Auth2 cannot answer: UNAVAILABLE, which clients retry (the Python proxy says
    UNAUTHENTICATED: the token is bad). Then Auth2 is back, and so is the user."""
    t = gw.token("alice")
    gw.auth.fault(mode)
    expect(config_rpc(gw.gateway.target, bearer(t), timeout=30), "UNAVAILABLE", "KBase auth service unavailable",
           secrets=[t])
    gw.auth.fault("none")

    def back():
        o = config_rpc(gw.gateway.target, bearer(t), timeout=30)
        assert o.name in ("OK", "UNAVAILABLE"), str(o)
        return o.name == "OK"

    harness.wait_until(back, 15, 0.3, "the gateway to admit the user once Auth2 is back")


def test_gateway_refuses_a_token_expiring_inside_the_cache_window(gw):
    """A token valid for 3 more seconds, TOKEN_CACHE_TTL=300: after it expires the gateway itself
    refuses it. Its pod has no interceptor, and Auth2 (fault `ignore_expiry`) still calls the
    token valid, so only the gateway's own expiry check can refuse (the Python proxy trusts its
    cache for 300 s whatever the token's expiry)."""
    t = gw.token(PLAIN_USER, expires_in_ms=3000)
    expires_at = time.time() + 3.0
    gw.auth.fault("ignore_expiry")
    expect(config_rpc(gw.gateway.target, bearer(t)), "OK")
    harness.wait_until(lambda: time.time() > expires_at + 0.2, 10, 0.1, "the token's expiry")
    expect(config_rpc(gw.gateway.target, bearer(t)), "UNAUTHENTICATED", "expired", secrets=[t])
    assert gw.pods["jane_doe"].alive()


def test_gateway_one_auth2_lookup_for_64_concurrent_first_calls(gw):
    """64 simultaneous first calls with one new token share one Auth2 lookup (the Python proxy
    makes 64)."""
    t = gw.token("carol")
    gw.auth.fault("delay", delay_ms=800)  # the first lookup stays in flight while the rest arrive
    outs = concurrent_config_rpcs(gw.gateway.target, bearer(t), 64)
    gw.auth.fault("none")
    bad = [str(o) for o in outs if o.name != "OK"]
    assert not bad, bad[:5]
    assert gw.auth.count(t) == 1


def test_gateway_forward_token_off(gw, start_gateway):
    """The token is forwarded by default (the pod's plugin checks it again: every other test);
    GATEWAY_FORWARD_TOKEN=false keeps it from the pod, whose plugin then finds none."""
    g = start_gateway("gateway-no-forward", {"GATEWAY_FORWARD_TOKEN": "false"})
    t = gw.t["alice"]
    expect(config_rpc(g.target, bearer(t)), "UNAUTHENTICATED", "missing KBase token", secrets=[t])
    # The gateway admitted the call and the pod answered it.
    assert g.access_lines(user="alice", status="UNAUTHENTICATED")
