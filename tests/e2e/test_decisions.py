"""Every row of the decision table (SPEC section 4) through a real Spark Connect server."""

from __future__ import annotations

import pytest

import harness
from harness import bearer, config_rpc, expect, expect_pyspark_denied, kbase, spark_query

pytestmark = pytest.mark.matrix  # every Spark version of the matrix (scripts/test.sh)

EXPECTED_ROWS = [(1, 1), (2, 4), (3, 9), (4, 16), (5, 25)]


# ----------------------------------------------------------------------------- allowed


def test_owner_pyspark_token_on_localhost(main):
    """`sc://localhost:P/;token=T` sends `authorization: Bearer T` in plaintext."""
    assert spark_query(main.server.url("localhost", token=main.t["alice"])) == EXPECTED_ROWS


def test_owner_pyspark_x_kbase_token(main):
    """`sc://127.0.0.1:P/;x-kbase-token=T` sends the token as plain metadata."""
    url = main.server.url("127.0.0.1", **{"x-kbase-token": main.t["alice"]})
    assert spark_query(url) == EXPECTED_ROWS


@pytest.mark.parametrize("who", ["carol", "dave"])
def test_allowed_users(main, who):
    """carol is an extra allowed user; dave is allowed and exempt from the MFA requirement."""
    expect(config_rpc(main.target, bearer(main.t[who])), "OK")


@pytest.mark.parametrize("meta", [
    lambda t: [("authorization", f"bearer {t}")],
    lambda t: [("authorization", f"BEARER {t}")],
    lambda t: [("authorization", f"Bearer   {t}  ")],
    lambda t: [("x-kbase-token", f"  {t} ")],
    lambda t: [("authorization", f"Bearer {t}"), ("x-kbase-token", t)],
], ids=["lowercase-scheme", "uppercase-scheme", "bearer-whitespace", "x-kbase-whitespace",
        "both-headers-same"])
def test_token_sources(main, meta):
    expect(config_rpc(main.target, meta(main.t["alice"])), "OK")


# ----------------------------------------------------------------------------- UNAUTHENTICATED


def test_no_token(main):
    before = main.fake.total()
    o = config_rpc(main.target, [])
    expect(o, "UNAUTHENTICATED", "missing KBase token", "token=", "x-kbase-token=")
    assert main.fake.total() == before, "a call without a token must not reach Auth2"


def test_no_token_pyspark(main):
    expect_pyspark_denied(lambda: spark_query(main.server.url("127.0.0.1")), "UNAUTHENTICATED",
                          "missing KBase token")


@pytest.mark.parametrize("meta", [
    [("authorization", "Bearer abc def")],
    [("x-kbase-token", "abc def")],
    [("x-kbase-token", "A" * 5000)],
    [("authorization", "Bearer " + "B" * 4097)],
], ids=["bearer-inner-space", "x-kbase-inner-space", "too-long", "bearer-too-long"])
def test_malformed_token(main, meta):
    before = main.fake.total()
    expect(config_rpc(main.target, meta), "UNAUTHENTICATED", "malformed KBase token")
    assert main.fake.total() == before, "a malformed token must be denied without calling Auth2"


@pytest.mark.parametrize("meta,what", [
    ([("authorization", "Bearer")], "empty"),
    ([("authorization", "Bearer    ")], "empty"),
    ([("x-kbase-token", "   ")], "empty"),
    ([("authorization", "Basic dXNlcjpwYXNz")], "not 'Bearer <token>'"),
], ids=["bearer-no-token", "bearer-blank", "x-kbase-blank", "basic-scheme"])
def test_empty_or_foreign_credentials(main, meta, what):
    """Blank tokens and other schemes are malformed (README: empty, not `Bearer`), never
    "missing", and are denied without calling Auth2."""
    before = main.fake.total()
    expect(config_rpc(main.target, meta), "UNAUTHENTICATED", "malformed KBase token", what)
    assert main.fake.total() == before


def test_ambiguous_tokens(main, tokens):
    other = tokens.new()
    before = main.fake.total()
    meta = [("authorization", f"Bearer {main.t['alice']}"), ("x-kbase-token", other)]
    expect(config_rpc(main.target, meta), "UNAUTHENTICATED", "ambiguous",
           secrets=[main.t["alice"], other])
    assert main.fake.total() == before


def test_invalid_token(main, tokens):
    bad = tokens.new()
    o = expect(config_rpc(main.target, bearer(bad)), "UNAUTHENTICATED",
               "invalid or revoked KBase token", secrets=[bad])
    assert main.fake.count(bad) == 1, o


def test_invalid_token_pyspark(main, tokens):
    bad = tokens.new()
    expect_pyspark_denied(lambda: spark_query(main.server.url("localhost", token=bad)),
                          "UNAUTHENTICATED", "invalid or revoked", secrets=[bad])


def test_expired_token_rejected_by_auth2(main):
    """Auth2 answers 401 for an expired token: invalid or revoked (or expired)."""
    o = expect(config_rpc(main.target, kbase(main.t["expired"])), "UNAUTHENTICATED",
               secrets=[main.t["expired"]])
    assert "invalid or revoked" in o.details.lower() or "expired" in o.details.lower(), str(o)


def test_expired_token_checked_locally(main, tokens, clean_faults):
    """An Auth2 that answers 200 for an expired token (expired-but-200): the plugin checks expiry."""
    t = main.owner_token(tokens, expires_in_ms=-5_000)
    main.fake.fault("ignore_expiry")
    o = expect(config_rpc(main.target, bearer(t)), "UNAUTHENTICATED", "expired", secrets=[t])
    assert main.fake.count(t) >= 1, o


# ----------------------------------------------------------------------------- PERMISSION_DENIED


def test_other_user_raw(main):
    expect(config_rpc(main.target, bearer(main.t["bob"])), "PERMISSION_DENIED", "bob", "alice",
           secrets=[main.t["bob"]])


def test_other_user_pyspark(main):
    expect_pyspark_denied(lambda: spark_query(main.server.url("localhost", token=main.t["bob"])),
                          "PERMISSION_DENIED", "bob", "alice", secrets=[main.t["bob"]])


@pytest.mark.parametrize("who", ["alice_nomfa", "alice_mfa_unknown"])
def test_mfa_required(main, who):
    expect(config_rpc(main.target, bearer(main.t[who])), "PERMISSION_DENIED", "MFA",
           secrets=[main.t[who]])


def test_role_required(short):
    expect(config_rpc(short.target, bearer(short.t["alice_norole"])), "PERMISSION_DENIED", "role",
           secrets=[short.t["alice_norole"]])


def test_role_present(short):
    expect(config_rpc(short.target, bearer(short.t["alice"])), "OK")


def test_owner_from_user_env(short):
    """The `short` server has no spark.kbase.auth.owner: the owner comes from USER=alice."""
    expect(config_rpc(short.target, kbase(short.t["bob"])), "PERMISSION_DENIED", "bob", "alice")
    assert spark_query(short.server.url("localhost", token=short.t["alice"])) == EXPECTED_ROWS


# ----------------------------------------------------------------------------- the server log


def test_denial_logged_with_fingerprint(main, tokens):
    bad = tokens.new()
    expect(config_rpc(main.target, bearer(bad)), "UNAUTHENTICATED")
    fp = harness.fingerprint(bad)
    line = harness.wait_until(
        lambda: next((ln for ln in main.server.log_text().splitlines() if fp in ln), None),
        15, 0.2, f"a log line with fingerprint {fp}")
    assert bad not in line
    assert any(w in line.lower() for w in ("invalid", "revoked", "denied", "unauthenticated")), line


# ----------------------------------------------------------------------------- other RPC shapes


def test_streaming_rpcs_as_owner(main, tmp_path):
    """Client-streaming (AddArtifacts) and long server-streaming (ExecutePlan with many batches)
    calls pass the interceptor like unary ones."""
    from pyspark.sql import SparkSession

    mod = tmp_path / "kbase_e2e_udf_helper.py"
    mod.write_text("def triple(x):\n    return 3 * x\n")
    spark = SparkSession.builder.remote(main.server.url("localhost", token=main.t["alice"])).create()
    try:
        spark.addArtifacts(str(mod), pyfile=True)
        n = spark.range(0, 300_000, numPartitions=4).selectExpr("id % 7 AS k").collect()
        assert len(n) == 300_000
        df = spark.range(3).selectExpr("id", "repeat('x', 100000) AS big")
        assert [len(r.big) for r in df.collect()] == [100_000] * 3
    finally:
        spark.stop()


def test_streaming_rpc_denied(main, tmp_path):
    """A denied client-streaming call (AddArtifacts) fails with the denial, not a hang."""
    from pyspark.sql import SparkSession

    mod = tmp_path / "kbase_e2e_denied_helper.py"
    mod.write_text("X = 1\n")
    spark = SparkSession.builder.remote(main.server.url("localhost", token=main.t["bob"])).create()
    try:
        expect_pyspark_denied(lambda: spark.addArtifacts(str(mod), pyfile=True), "PERMISSION_DENIED",
                              secrets=[main.t["bob"]])
    finally:
        try:
            spark.stop()
        except Exception:  # noqa: BLE001
            pass
