"""Routing (GATEWAY.md §1 rows "token", "routing", "unreachable pod"): each user's calls reach
that user's own pod, proven by what the pod itself reports; user names with `_` reach the pod
KubeSpawner's escaping names; a user whose pod is not running is told so at once. Only the URL
styles depend on the client's version (matrix); routing is the gateway's alone."""

from __future__ import annotations

import pytest

from harness import bearer, config_rpc, expect

from .topology import (BACKEND_PORT, EXPECTED_ROWS, PLAIN_LABEL, PLAIN_USER, pod_host,
                       pod_of, session, small_query)

EXECUTE_PLAN = "/spark.connect.SparkConnectService/ExecutePlan"


def check_lands_on_own_pod(gw, user: str, url: str, label: str = None) -> None:
    """A pyspark session on ``url`` reaches ``user``'s pod, by the host ``label`` names."""
    spark = session(url)
    try:
        assert pod_of(spark) == user
        assert small_query(spark) == EXPECTED_ROWS
    finally:
        spark.stop()
    lines = gw.gateway.access_lines(user=user, method=EXECUTE_PLAN, status="OK")
    assert lines, f"no access line for {user}'s ExecutePlan"
    assert {ln["pod"] for ln in lines} == {f"{pod_host(label or user)}:{BACKEND_PORT}"}


@pytest.mark.matrix  # every Spark version of the matrix (scripts/test.sh)
@pytest.mark.parametrize("style", ["token", "x-kbase-token"])
def test_gateway_url_styles(gw, style):
    """`sc://localhost:P/;token=T` (pyspark sends `authorization: Bearer`, which the Python proxy
    refuses) and `sc://HOST:P/;x-kbase-token=T` (the notebook's and the remote client's)."""
    host = "localhost" if style == "token" else "127.0.0.1"
    check_lands_on_own_pod(gw, "alice", gw.gateway.url(host, **{style: gw.t["alice"]}))


@pytest.mark.parametrize("user,style", [("bob", "token"), ("carol", "x-kbase-token")])
def test_gateway_each_user_lands_on_own_pod(gw, user, style):
    """Three users, three pods, one gateway; bob's token was made without MFA: he is in
    MFA_EXEMPT_USERS."""
    host = "localhost" if style == "token" else "127.0.0.1"
    check_lands_on_own_pod(gw, user, gw.gateway.url(host, **{style: gw.t[user]}))


def test_gateway_underscore_user_reaches_escaped_pod(gw):
    """`jane_doe` cannot be a DNS label: KubeSpawner names her pod's service `jupyter-jane-5fdoe`,
    and that is the only host registered for her pod (the Python proxy would ask for
    `jupyter-jane_doe…`, which no resolver answers)."""
    check_lands_on_own_pod(gw, PLAIN_USER, gw.gateway.url("localhost", token=gw.t[PLAIN_USER]), PLAIN_LABEL)


def test_gateway_raw_escaping_refuses_what_no_host_can_hold(gw, start_gateway):
    """GATEWAY_USERNAME_ESCAPING=raw keeps the Python proxy's raw names, but a name that cannot
    form a host is refused (PERMISSION_DENIED, naming the user), never dialled."""
    g = start_gateway("gateway-raw-names", {"GATEWAY_USERNAME_ESCAPING": "raw"})
    t = gw.t[PLAIN_USER]
    expect(config_rpc(g.target, bearer(t)), "PERMISSION_DENIED", PLAIN_USER, "DNS label", secrets=[t])
    assert g.metrics().value("kbase_gateway_pod_dials_total") == 0
    expect(config_rpc(g.target, bearer(gw.t["alice"])), "OK")  # names a label can hold still route


def test_gateway_user_without_pod_is_told_at_once(gw):
    """erin's notebook server is not running (nothing listens where her host points): UNAVAILABLE
    (which clients retry, unlike the Python proxy's FAILED_PRECONDITION), saying what to do,
    without waiting for BACKEND_CONNECT_TIMEOUT (5 s); the next call right after does not dial
    the known-dead pod again."""
    g, t = gw.gateway, gw.t["erin"]
    o = expect(config_rpc(g.target, bearer(t), timeout=30), "UNAVAILABLE", "erin",
               "start your notebook server", secrets=[t])
    assert o.elapsed < 5.0, f"not at once: {o}"
    dials = g.metrics().value("kbase_gateway_pod_dials_total")
    expect(config_rpc(g.target, bearer(t), timeout=30), "UNAVAILABLE", "start your notebook server")
    assert g.metrics().value("kbase_gateway_pod_dials_total") == dials, "the dead pod was dialled again at once"
