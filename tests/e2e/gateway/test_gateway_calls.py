"""Every shape of call passes through the gateway unchanged (GATEWAY.md §1 rows "methods" and
"channels"): methods the Python proxy's fixed list lacks, client streaming, interruption from
another thread, a ~100 MB result, and a long stream while many users come and go. All of them
use alice's pod only (the matrix runs start no other)."""

from __future__ import annotations

import hashlib
import uuid
import zlib

import pytest

import harness
from harness import bearer, config_rpc, expect

from .topology import (BACKEND_PORT, EXPECTED_ROWS, InThread, ids, pod_host, pod_of, session,
                       slow_rows, small_query, wait_live_streams)

pytestmark = pytest.mark.matrix  # every Spark version of the matrix (scripts/test.sh)

SERVICE = "/spark.connect.SparkConnectService/"


def alice_session(gw, gateway=None):
    return session((gateway or gw.gateway).url("localhost", token=gw.t["alice"]))


def test_gateway_release_session(gw):
    """`spark.stop()` releases the session on the pod (ReleaseSession, new in Spark 4.0, which the
    Python proxy answers UNIMPLEMENTED): the pod itself then refuses the released session."""
    spark = alice_session(gw)
    sid, uid = spark.client._session_id, spark.client._user_id or ""
    assert small_query(spark) == EXPECTED_ROWS
    spark.client.release_session()  # raises on failure (stop() only logs)
    spark.stop()
    # Spark keys sessions by (user_id, session_id): the same ones as the client's.
    o = config_rpc(gw.gateway.target, bearer(gw.t["alice"]), session_id=sid, user_id=uid)
    assert o.name != "OK" and "SESSION_CLOSED" in o.details, str(o)
    assert gw.gateway.access_lines(user="alice", method=SERVICE + "ReleaseSession", status="OK")


def test_gateway_add_artifacts(gw, tmp_path):
    """`spark.addArtifacts` (AddArtifacts: client streaming, a 3 MiB file in ~100 chunks) arrives
    on the pod byte for byte."""
    data = hashlib.sha256(b"kbase-e2e").digest() * (3 * 1024 * 1024 // 32)
    path = tmp_path / f"kbase-e2e-artifact-{uuid.uuid4().hex}.bin"
    path.write_bytes(data)
    spark = alice_session(gw)
    try:
        spark.addArtifacts(str(path), file=True)
    finally:
        spark.stop()
    copies = list(gw.pods["alice"].dir.rglob(path.name))
    assert copies, f"{path.name} is nowhere under {gw.pods['alice'].dir}"
    assert all(hashlib.sha256(c.read_bytes()).digest() == hashlib.sha256(data).digest() for c in copies)
    lines = gw.gateway.access_lines(user="alice", method=SERVICE + "AddArtifacts", status="OK")
    assert lines and int(lines[-1]["bytes_in"]) >= len(data), lines[-1:]


@pytest.mark.parametrize("how", ["tag", "all"])
def test_gateway_interrupt_from_another_thread(gw, how):
    """A query of about a minute, interrupted from another thread (`interruptTag` /
    `interruptAll`: an Interrupt call beside the live ExecutePlan stream), ends at once."""
    spark = alice_session(gw)
    tag = f"kbase-e2e-{uuid.uuid4().hex[:8]}"

    def long_query():
        spark.addTag(tag)  # tags are per thread
        return slow_rows(spark, 60, 2000).collect()

    try:
        runner = InThread(long_query)
        wait_live_streams(gw.gateway)
        interrupt = (lambda: spark.interruptTag(tag)) if how == "tag" else spark.interruptAll
        interrupted = harness.wait_until(interrupt, 30, 0.2, "the query to be interrupted")
        with pytest.raises(Exception) as ei:
            runner.join(45)
        assert "cancel" in str(ei.value).lower(), str(ei.value)[:2000]
        assert interrupted
    finally:
        spark.stop()
    assert gw.gateway.access_lines(user="alice", method=SERVICE + "Interrupt", status="OK")


def test_gateway_clone_session(gw):
    """CloneSession (Spark 4.1+): the Python proxy answers UNIMPLEMENTED."""
    from pyspark.sql.connect.session import SparkSession

    if not hasattr(SparkSession, "cloneSession"):
        pytest.skip("this pyspark has no SparkSession.cloneSession (CloneSession came with Spark 4.1)")
    spark = alice_session(gw)
    mark = uuid.uuid4().hex
    try:
        spark.conf.set("spark.kbase.e2e.mark", mark)
        clone = spark.cloneSession()
        try:
            assert clone.client._session_id != spark.client._session_id
            assert clone.conf.get("spark.kbase.e2e.mark") == mark  # the pod copied the session's state
            assert pod_of(clone) == "alice"
        finally:
            # Not clone.stop(): pyspark 4.1 and 4.2 make the clone without release_session_on_close,
            # which stop() reads.
            clone.client.release_session()
            clone.client.close()
    finally:
        spark.stop()
    assert gw.gateway.access_lines(user="alice", method=SERVICE + "CloneSession", status="OK")


def test_gateway_get_status(gw):
    """GetStatus (GATEWAY.md names it for Spark 4.3; pyspark 4.2.1 sends it too, and its server
    answers): the Python proxy answers UNIMPLEMENTED."""
    spark = alice_session(gw)
    try:
        if not hasattr(spark.client, "_get_operation_statuses"):
            pytest.skip("this pyspark cannot send GetStatus (pyspark 4.2 and later can)")
        from pyspark.sql.connect.proto import base_pb2

        assert small_query(spark) == EXPECTED_ROWS
        succeeded = base_pb2.GetStatusResponse.OperationStatus.OPERATION_STATE_SUCCEEDED

        def query_succeeded():  # TERMINATING until the client's ReleaseExecute reaches the pod
            statuses = spark.client._get_operation_statuses().operation_statuses
            return any(s.state == succeeded for s in statuses)

        harness.wait_until(query_succeeded, 15, 0.2, "GetStatus to report the query SUCCEEDED")
    finally:
        spark.stop()
    assert gw.gateway.access_lines(user="alice", method=SERVICE + "GetStatus", status="OK")


ROWS_100MB = 100_000  # × ~1 KiB


def test_gateway_100mb_result_intact(gw):
    """A ~100 MB result streams through intact: the CRC-32 sum of its strings computed by the pod
    equals the one the client computes over what it received."""
    spark = alice_session(gw)
    try:
        df = spark.range(0, ROWS_100MB, 1, 4).selectExpr(
            "id", "repeat(sha2(CAST(id AS STRING), 256), 16) AS s")  # 1,024 characters a row
        pod_sum = df.selectExpr("sum(crc32(s)) AS c").collect()[0].c
        before = gw.gateway.metrics().value("kbase_gateway_response_bytes_total")
        table = df.toArrow()
        received = gw.gateway.metrics().value("kbase_gateway_response_bytes_total") - before
    finally:
        spark.stop()
    assert sorted(table.column("id").to_pylist()) == list(range(ROWS_100MB))
    strings = table.column("s").to_pylist()
    assert sum(zlib.crc32(s.encode()) for s in strings) == pod_sum
    assert received >= ROWS_100MB * 1024, f"only {received} bytes went through the gateway"


CHURN_USERS = 12


def test_gateway_long_stream_survives_users_coming_and_going(gw, start_gateway):
    """MAX_CHANNELS_PER_BACKEND=1 and at most 2 pods kept connected: while alice's query streams,
    12 other users call their own pods and leave. Their pods' connections close as they go idle,
    never alice's live one: her stream ends OK without a reattach (the Python proxy's one LRU of 5
    channels in total closes her channel, stream and all, at the 6th user). The 12 pods are all
    alice's server under other names; its plugin refuses them, which is the pod's answer."""
    users = [f"churn{i:02d}" for i in range(CHURN_USERS)]
    g = start_gateway("gateway-churn", {"MAX_CHANNELS_PER_BACKEND": "1", "GATEWAY_MAX_PODS": "2"},
                      extra_hosts={pod_host(u): gw.pods["alice"].port for u in users})
    churn_tokens = {u: gw.token(u) for u in users}
    spark = alice_session(gw, g)
    try:
        runner = InThread(lambda: slow_rows(spark, 20, 1000).collect())  # ~10 s
        wait_live_streams(g)
        for u in users:
            expect(config_rpc(g.target, bearer(churn_tokens[u])), "PERMISSION_DENIED", u, "alice")
        assert runner.alive(), "the query ended before the other users were done: make it longer"
        assert ids(runner.join(120)) == list(range(20))
    finally:
        spark.stop()
    for u in users:  # forwarded to their pods, which answered
        assert g.access_lines(user=u, pod=f"{pod_host(u)}:{BACKEND_PORT}", status="PERMISSION_DENIED"), u
    execute = g.access_lines(user="alice", method=SERVICE + "ExecutePlan")
    reattach = g.access_lines(user="alice", method=SERVICE + "ReattachExecute")
    assert [ln["status"] for ln in execute] == ["OK"] and not reattach, (execute, reattach)
    m = g.metrics()
    assert m.value("kbase_gateway_pod_dials_total") >= CHURN_USERS + 1
    assert m.value("kbase_gateway_pod_connections") <= 2, m.text
