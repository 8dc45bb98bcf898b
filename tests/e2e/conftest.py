"""Session fixtures for the end-to-end tests.

Two long-lived Spark Connect servers, each with its own fake Auth2, are shared by most tests:

* ``main``  - owner ``alice`` from ``spark.kbase.auth.owner``, extra users ``carol,dave``,
  MFA required (``dave`` exempt), default cache settings, 2 s request timeout.
* ``short`` - seed-style configuration: owner from ``USER=alice`` and the Auth2 URL from
  ``KBASE_AUTH_URL`` (no ``spark.kbase.auth.owner``/``url``), custom role ``spark_user``
  required, a 3 s positive and 1 s negative cache, 2 s request timeout, a new-token budget too
  large to matter; the fault-injection tests run here.

Both start in parallel on first use and are stopped at the end of the session (and at
interpreter exit). Everything each test run writes is under ``.e2e-work/run-*/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

import harness
from harness import FakeAuth2, SparkServer, TokenRegistry

KEEP_RUNS = 5


def pytest_report_header(config):
    lines = []
    for what, fn in (("jar", harness.find_jar), ("fake-auth2", harness.find_fake_auth2),
                     ("gateway", harness.find_gateway),
                     ("SPARK_HOME", harness.find_spark_home), ("JAVA_HOME", harness.find_java_home)):
        try:
            lines.append(f"e2e {what}: {fn()}")
        except Exception as e:  # noqa: BLE001 - reported again, as a failure, by the fixtures
            lines.append(f"e2e {what}: MISSING ({e})")
    return lines


@pytest.fixture(scope="session")
def workdir() -> Path:
    import pyspark

    d = harness.new_work_dir(f"run-spark{pyspark.__version__}", KEEP_RUNS)
    print(f"\ne2e work directory (logs): {d}")
    return d


@pytest.fixture(scope="session")
def tokens() -> TokenRegistry:
    return TokenRegistry()


@pytest.fixture(scope="session")
def all_servers() -> list:
    """Every Spark server started in this session (for the log checks)."""
    return []


@pytest.fixture(scope="session", autouse=True)
def _stop_everything_at_end():
    yield
    harness.close_channels()
    harness.stop_all()


@dataclass
class Env:
    """One Spark server, its fake Auth2 and the tokens that fake knows."""

    server: SparkServer
    fake: FakeAuth2
    t: dict  # name -> token
    owner_fields: dict = field(default_factory=dict)  # what this server's policy requires

    @property
    def target(self) -> str:
        return self.server.target

    def owner_token(self, reg: TokenRegistry, **fields) -> str:
        """A new token of the owner ``alice`` that this server's policy admits, known to its fake
        (``fields`` add to or override the policy's, e.g. ``expires_in_ms``)."""
        return self.fake.add_token(reg.new(), "alice", **{**self.owner_fields, **fields})


def _main_tokens(reg: TokenRegistry) -> tuple[dict, list]:
    t = {
        "alice": reg.new(),         # owner, MFA used
        "alice_nomfa": reg.new(),   # owner, MFA not used -> denied (MFA required)
        "alice_mfa_unknown": reg.new(),  # owner, Auth2 reports no mfa field at all
        "bob": reg.new(),           # another user -> denied
        "carol": reg.new(),         # in allowedUsers, MFA used
        "dave": reg.new(),          # in allowedUsers and mfaExemptUsers, MFA not used
        "expired": reg.new(),       # owner, expired a minute ago
    }
    entries = [
        {"token": t["alice"], "user": "alice", "mfa": "Used"},
        {"token": t["alice_nomfa"], "user": "alice", "mfa": "NotUsed"},
        {"token": t["alice_mfa_unknown"], "user": "alice"},
        {"token": t["bob"], "user": "bob", "mfa": "Used"},
        {"token": t["carol"], "user": "carol", "mfa": "Used"},
        {"token": t["dave"], "user": "dave", "mfa": "NotUsed"},
        {"token": t["expired"], "user": "alice", "mfa": "Used", "expires_in_ms": -60_000},
    ]
    return t, entries


def _short_tokens(reg: TokenRegistry) -> tuple[dict, list]:
    t = {
        "alice": reg.new(),         # owner with the required role
        "alice_norole": reg.new(),  # owner without it -> denied
        "bob": reg.new(),           # another user with the role -> denied
    }
    entries = [
        {"token": t["alice"], "user": "alice", "customroles": ["other", "spark_user"]},
        {"token": t["alice_norole"], "user": "alice", "customroles": ["other"]},
        {"token": t["bob"], "user": "bob", "customroles": ["spark_user"]},
    ]
    return t, entries


@pytest.fixture(scope="session")
def envs(workdir, tokens, all_servers) -> dict:
    mt, me = _main_tokens(tokens)
    st, se = _short_tokens(tokens)
    fake_main = FakeAuth2(workdir, "fake-main", me).start()
    fake_short = FakeAuth2(workdir, "fake-short", se).start()
    main = SparkServer(workdir, "main", {
        "spark.kbase.auth.url": fake_main.url,
        "spark.kbase.auth.owner": "alice",
        "spark.kbase.auth.allowedUsers": "carol,dave",
        "spark.kbase.auth.requireMfa": "true",
        "spark.kbase.auth.mfaExemptUsers": "dave",
        "spark.kbase.auth.connectTimeout": "1s",
        "spark.kbase.auth.requestTimeout": "2s",
    })
    short = SparkServer(workdir, "short", {
        "spark.kbase.auth.requiredRoles": "spark_user",
        "spark.kbase.auth.cache.maxTtl": "3s",
        "spark.kbase.auth.cache.invalidTtl": "1s",
        "spark.kbase.auth.connectTimeout": "1s",
        "spark.kbase.auth.requestTimeout": "2s",
        "spark.kbase.auth.failFast.cooldown": "1s",
        # The fault tests send many new tokens in quick succession; the new-token budget has its
        # own tests (test_owner_keeps_working.py), here it would only make them order-dependent.
        "spark.kbase.auth.newTokens.perSecond": "1000",
        "spark.kbase.auth.newTokens.burst": "1000",
    }, env={"USER": "alice", "KBASE_AUTH_URL": fake_short.url})
    all_servers.extend([main, short])
    harness.start_servers([main, short])
    yield {"main": Env(main, fake_main, mt, {"mfa": "Used"}),
           "short": Env(short, fake_short, st, {"customroles": ["spark_user"]})}
    for s in (main, short):
        s.stop()
    fake_main.stop()
    fake_short.stop()


@pytest.fixture(scope="session")
def main(envs) -> Env:
    return envs["main"]


@pytest.fixture(scope="session")
def short(envs) -> Env:
    return envs["short"]


@pytest.fixture
def clean_faults(envs):
    """Leaves both fakes without a fault after the test, whatever happened."""
    yield
    for e in envs.values():
        try:
            e.fake.fault("none")
        except Exception:  # noqa: BLE001
            pass
