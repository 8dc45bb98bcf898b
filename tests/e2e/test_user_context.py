"""spark.kbase.auth.userContext through real Spark Connect and the real pyspark client: Spark
sees the user the token proved, not the user_id the client wrote.

Three servers of their own, one per mode, all with owner ``alice`` and ``allowedUsers=bob`` and
one fake Auth2: ``rewrite`` (the setting left unset: the default), ``off`` and ``require``.
Python UDFs run in this venv's interpreter (``PYSPARK_PYTHON``): one reads the operation's job
tag, which Spark Connect writes from the request's user_id
(``SparkConnect_OperationTag_User_<user_id>_Session_<session id>_Operation_<id>``) and hands to
every task of the operation.
"""

from __future__ import annotations

import sys
import uuid

import pytest

import harness
from harness import FakeAuth2, SparkServer, config_rpc, expect, expect_pyspark_denied, kbase, spark_query

pytestmark = [pytest.mark.matrix, pytest.mark.slow]

EXPECTED_ROWS = [(1, 1), (2, 4), (3, 9), (4, 16), (5, 25)]
MODES = ("rewrite", "off", "require")


@pytest.fixture(scope="module")
def uc(workdir, tokens, all_servers):
    t = {"alice": tokens.new(), "bob": tokens.new()}
    fake = FakeAuth2(workdir, "fake-uc", [{"token": t[u], "user": u} for u in t]).start()
    servers = {}
    for mode in MODES:
        conf = {
            "spark.kbase.auth.url": fake.url,
            "spark.kbase.auth.owner": "alice",
            "spark.kbase.auth.allowedUsers": "bob",
        }
        if mode != "rewrite":
            conf["spark.kbase.auth.userContext"] = mode
        servers[mode] = SparkServer(workdir, f"uc-{mode}", conf, env={"PYSPARK_PYTHON": sys.executable})
    all_servers.extend(servers.values())
    harness.start_servers(list(servers.values()))
    yield servers, t
    for s in servers.values():
        s.stop()
    fake.stop()


def session(server: SparkServer, token: str, **params):
    """A new pyspark Connect session on ``server`` with ``token`` and URL ``params`` (user_id,
    session_id)."""
    from pyspark.sql import SparkSession

    return SparkSession.builder.remote(server.url("localhost", token=token, **params)).create()


def stop(*sessions) -> None:
    for s in sessions:
        try:
            s.stop()
        except Exception:  # noqa: BLE001 - a session another client released may fail to release
            pass


def job_tags(spark) -> str:
    """The job tags Spark gives the tasks of one operation, read inside a task."""
    from pyspark.sql.functions import udf

    @udf("string")
    def tags(_):
        from pyspark import TaskContext

        return TaskContext.get().getLocalProperty("spark.job.tags")

    return spark.range(1).select(tags("id")).first()[0]


@pytest.fixture
def no_client_user(monkeypatch):
    """pyspark takes the default user_id from SPARK_USER, then USER, of the client's machine; with
    neither it sends no user context at all (Spark then reads user_id "")."""
    monkeypatch.delenv("SPARK_USER", raising=False)
    monkeypatch.delenv("USER", raising=False)


# ----------------------------------------------------------------------------- rewrite


def test_spark_sees_the_verified_user_not_the_claimed_one(uc):
    """Owner alice connects claiming ``user_id=mallory``: the query works, and the operation
    Spark runs is tagged with alice. On the ``off`` server the same client is tagged mallory."""
    servers, t = uc
    for mode, user in (("rewrite", "alice"), ("off", "mallory")):
        spark = session(servers[mode], t["alice"], user_id="mallory")
        try:
            assert [tuple(r) for r in spark.range(1, 6).selectExpr("id", "id * id").orderBy("id").collect()] \
                == EXPECTED_ROWS
            tags = job_tags(spark)
            assert f"SparkConnect_OperationTag_User_{user}_Session_" in tags, (mode, tags)
            if mode == "rewrite":
                assert "mallory" not in tags, tags
        finally:
            stop(spark)


@pytest.mark.parametrize("claim", ["alice", "none"], ids=["claims-alice", "no-user-context"])
@pytest.mark.parametrize("mode", ["rewrite", "off"])
def test_an_allowed_user_cannot_enter_the_owners_session(uc, mode, claim, no_client_user):
    """bob (an allowed user) presents alice's session id, claiming to be alice (or, like alice,
    sending no user context): under ``rewrite`` Spark keys his calls by bob and he cannot see
    alice's temporary view; under ``off`` he works inside alice's session."""
    servers, t = uc
    sid = str(uuid.uuid4())
    params = {"session_id": sid} if claim == "none" else {"session_id": sid, "user_id": claim}
    owner = session(servers[mode], t["alice"], **params)
    intruder = None
    try:
        owner.range(3).createOrReplaceTempView("alices_view")
        assert owner.sql("SELECT * FROM alices_view").count() == 3
        intruder = session(servers[mode], t["bob"], **params)
        if mode == "rewrite":
            with pytest.raises(Exception, match="TABLE_OR_VIEW_NOT_FOUND"):
                intruder.sql("SELECT * FROM alices_view").collect()
            assert "User_bob_Session_" in job_tags(intruder)
        else:
            assert intruder.sql("SELECT * FROM alices_view").count() == 3
    finally:
        stop(*[s for s in (intruder, owner) if s is not None])


def test_artifacts_reach_the_verified_users_session(uc, tmp_path):
    """AddArtifacts is client streaming: a Python file of 200 kB goes as several chunk messages,
    each rewritten; a UDF of the rewritten session imports it. (Left as the client wrote them,
    the artifacts would land in a session of 'mallory' and the import would fail.)"""
    servers, t = uc
    name = f"kbase_uc_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(f"BIG = {'x' * 200_000!r}\n")
    spark = session(servers["rewrite"], t["alice"], user_id="mallory")
    try:
        spark.addArtifacts(str(tmp_path / f"{name}.py"), pyfile=True)
        from pyspark.sql.functions import udf

        @udf("int")
        def size(_):
            import importlib

            return len(importlib.import_module(name).BIG)

        assert spark.range(1).select(size("id")).first()[0] == 200_000
    finally:
        stop(spark)


def test_a_request_type_newer_than_the_plugin_build(uc):
    """Spark 4.1 added CloneSession, a request type the plugin (built against 4.0) does not know:
    its user context is rewritten through protobuf reflection, so the clone finds alice's
    session and its temporary view."""
    import pyspark

    if tuple(int(x) for x in pyspark.__version__.split(".")[:2]) < (4, 1):
        pytest.skip(f"CloneSession is new in Spark 4.1 (this is {pyspark.__version__})")
    servers, t = uc
    spark = session(servers["rewrite"], t["alice"], user_id="mallory")
    clone = None
    try:
        spark.range(2).createOrReplaceTempView("to_clone")
        clone = spark.cloneSession()
        assert clone.sql("SELECT * FROM to_clone").count() == 2
        assert "User_alice_Session_" in job_tags(clone)
    finally:
        stop(*[s for s in (clone, spark) if s is not None])


# ----------------------------------------------------------------------------- require


def test_require_refuses_a_mismatch_and_an_empty_user_id(uc, no_client_user):
    servers, t = uc
    require = servers["require"]
    for user_id, said in (("mallory", "user_id 'mallory'"), ("", "an empty user_id"), (None, "an empty user_id")):
        expect(config_rpc(require.target, kbase(t["alice"]), user_id=user_id), "PERMISSION_DENIED", said,
               "'alice'", ";user_id=alice", "SPARK_USER=alice", secrets=[t["alice"]])
    expect(config_rpc(require.target, kbase(t["bob"]), user_id="alice"), "PERMISSION_DENIED", "user_id 'alice'",
           "'bob'", secrets=[t["bob"]])
    expect_pyspark_denied(lambda: spark_query(require.url("localhost", token=t["alice"], user_id="mallory")),
                          "PERMISSION_DENIED", "user_id=alice", secrets=[t["alice"]])
    expect_pyspark_denied(lambda: spark_query(require.url("localhost", token=t["alice"])),
                          "PERMISSION_DENIED", "empty user_id", secrets=[t["alice"]])
    harness.wait_until(lambda: "reason=user_context_mismatch" in require.log_text(), 15, 0.2,
                       "the refusal in the server log")


def test_require_accepts_the_verified_user(uc):
    servers, t = uc
    require = servers["require"]
    expect(config_rpc(require.target, kbase(t["alice"]), user_id="alice"), "OK")
    expect(config_rpc(require.target, kbase(t["bob"]), user_id="bob"), "OK")
    assert spark_query(require.url("localhost", token=t["alice"], user_id="alice")) == EXPECTED_ROWS
