"""The gateway's life (GATEWAY.md §2 "Lifecycle", "Stateless"; §4): SIGTERM drains, and a
gateway killed in the middle of a long query costs the user nothing."""

from __future__ import annotations

import signal
import socket

import pytest

from harness import bearer, config_rpc, wait_until

from .topology import InThread, ids, session, slow_rows, wait_live_streams

SERVICE = "/spark.connect.SparkConnectService/"


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return True
    except ConnectionRefusedError:
        return False


@pytest.mark.matrix
def test_gateway_sigterm_drains(gw, start_gateway):
    """SIGTERM while alice's query streams: /readyz turns 503 and the port takes no new
    connection; another replica takes the port over (a rolling update), and the client's next
    calls go there; her stream finishes on the draining gateway with its whole result (no
    reattach), and that gateway exits 0."""
    g = start_gateway("gateway-drain", {"GATEWAY_DRAIN_SECONDS": "60"})
    spark = session(g.url("localhost", token=gw.t["alice"]))
    replica = None
    try:
        runner = InThread(lambda: slow_rows(spark, 12, 1000).collect())  # ~6 s
        wait_live_streams(g)
        g.signal(signal.SIGTERM)
        wait_until(lambda: g.admin("/readyz") == (503, "draining\n"), 10, 0.05, "/readyz to say draining")
        # The listener closes right after /readyz turns: wait for it.
        wait_until(lambda: not listening(g.port), 10, 0.05, "the gRPC port to refuse connections")
        o = config_rpc(g.target, bearer(gw.t["alice"]), timeout=10)
        assert o.name == "UNAVAILABLE", str(o)
        replica = start_gateway("gateway-drain-replica", port=g.port)
        assert runner.alive(), "the query ended before the drain was checked: make it longer"
        assert ids(runner.join(60)) == list(range(12))
        assert g.wait_exit(30) == 0, g.log_text()[-3000:]
    finally:
        # pyspark retries its clean-up calls for 10 minutes: something must answer them.
        if replica is None and not listening(g.port):
            replica = start_gateway("gateway-drain-replica", port=g.port)
        spark.stop()
    assert "drained: every call finished" in g.log_text()
    execute = g.access_lines(user="alice", method=SERVICE + "ExecutePlan")
    assert [ln["status"] for ln in execute] == ["OK"], execute
    assert not (g.access_lines(method=SERVICE + "ReattachExecute")
                or replica.access_lines(method=SERVICE + "ReattachExecute"))


@pytest.mark.matrix
def test_gateway_killed_during_a_long_query(gw, start_gateway):
    """The gateway is killed (SIGKILL: no drain) while alice's query runs, and started again on
    the same port: pyspark reattaches (ReattachExecute) through the new process and the query
    completes with the right result."""
    g = start_gateway("gateway-restart")
    spark = session(g.url("localhost", token=gw.t["alice"]))
    try:
        runner = InThread(lambda: slow_rows(spark, 12, 1000).collect())  # ~6 s
        wait_live_streams(g)
        g.signal(signal.SIGKILL)
        assert g.wait_exit(10) is not None
        restarted_at = len(g.log_text())
        g.start()
        assert runner.alive(), "the query ended before the gateway came back: make it longer"
        assert ids(runner.join(120)) == list(range(12))
    finally:
        if not g.alive():  # pyspark retries its clean-up calls for 10 minutes
            g.start()
        spark.stop()
    after = g.log_text()[restarted_at:]
    assert "ReattachExecute" in after and "user=alice" in after
    assert [ln for ln in g.access_lines(user="alice", method=SERVICE + "ReattachExecute", status="OK")]
