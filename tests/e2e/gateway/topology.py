"""The gateway's end-to-end topology: pods, users, Auth2 fakes and gateways (fixtures in
conftest.py)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import harness
from harness import FakeAuth2, Gateway, SparkServer, TokenRegistry

NAMESPACE = "kbase-e2e"
TEMPLATE = "jupyter-{username}.{namespace}.svc.cluster.local"
BACKEND_PORT = 15002
POD_CONF = "spark.kbase.e2e.pod"  # each pod's user, read back through the client
PLUGIN_USERS = ("alice", "bob", "carol")
PLAIN_USER = "jane_doe"  # her pod has no interceptor
PLAIN_LABEL = "jane-5fdoe"  # KubeSpawner's escaping of jane_doe, written out (not computed)
NO_POD_USER = "erin"
EXPECTED_ROWS = [(1, 1), (2, 4), (3, 9), (4, 16), (5, 25)]


def pod_host(label: str) -> str:
    return TEMPLATE.format(username=label, namespace=NAMESPACE)


def python_proxy_env(auth_url: str) -> dict:
    """A Deployment's environment for BERDL's Python proxy, pointed at this topology."""
    return {
        "KBASE_AUTH_URL": auth_url,
        "BACKEND_PORT": str(BACKEND_PORT),
        "BACKEND_NAMESPACE": NAMESPACE,
        "SERVICE_TEMPLATE": TEMPLATE,
        "REQUIRE_MFA": "true",
        "MFA_EXEMPT_USERS": "bob",
        "TOKEN_CACHE_TTL": "300",
        "MAX_CHANNELS_PER_BACKEND": "5",
        "BACKEND_CONNECT_TIMEOUT": "5.0",
    }


# The gateway's own settings for tests: many new tokens in quick succession (the budget has its
# own tests in the core), Auth2 faults that end quickly, a dead pod known dead for a whole test.
TEST_SETTINGS = {
    "GATEWAY_NEW_TOKENS_PER_SECOND": "1000",
    "GATEWAY_NEW_TOKENS_BURST": "1000",
    "GATEWAY_AUTH_REQUEST_TIMEOUT": "2s",
    "GATEWAY_FAIL_FAST_COOLDOWN": "1s",
    "GATEWAY_POD_RETRY_BACKOFF": "30s",
    "GATEWAY_DRAIN_SECONDS": "5",
}


@dataclass
class Topology:
    workdir: object
    registry: TokenRegistry
    auth: FakeAuth2  # the gateway's Auth2
    pods_auth: FakeAuth2  # the pods' plugins' Auth2
    pods: dict  # user -> SparkServer
    no_pod_port: int  # where erin's pod would listen
    t: dict = field(default_factory=dict)  # name -> token
    gateway: Gateway = None  # the main gateway
    started: list = field(default_factory=list)  # every gateway started, for the log checks

    def token(self, user: str, mfa: str = "Used", **fields) -> str:
        """A new token of ``user``, known to both Auth2 fakes."""
        t = self.registry.new()
        if mfa is not None:  # None: Auth2 reports no mfa at all
            fields["mfa"] = mfa
        for fake in (self.auth, self.pods_auth):
            fake.add_token(t, user, **fields)
        return t

    def resolve_args(self, extra: dict = None) -> list:
        """``--resolve`` for every pod (and erin's closed port), plus ``extra`` {host: port}."""
        hosts = {pod_host(u if u != PLAIN_USER else PLAIN_LABEL): s.port for u, s in self.pods.items()}
        hosts[pod_host(NO_POD_USER)] = self.no_pod_port
        hosts.update(extra or {})
        args = []
        for host, port in hosts.items():
            args += ["--resolve", f"{host}:{BACKEND_PORT}=127.0.0.1:{port}"]
        return args

    def new_gateway(self, name: str, env: dict = None, extra_hosts: dict = None, port: int = 0) -> Gateway:
        """A gateway (not started) with the Python proxy's environment, the test settings and
        ``env`` over them, in front of every pod (and ``extra_hosts``), on ``port`` (0: any)."""
        g = Gateway(self.workdir, name, {**python_proxy_env(self.auth.url), **TEST_SETTINGS, **(env or {})},
                    self.resolve_args(extra_hosts), port)
        self.started.append(g)
        return g


def make_pod(workdir, user: str, pods_auth_url: str, with_plugin: bool = None,
             lean: bool = True) -> SparkServer:
    """``user``'s pod; with our plugin (owner ``user``) if ``with_plugin``, by default for
    PLUGIN_USERS only. ``lean``: the tests' JVM (below); scripts/gateway_bench.py measures pods
    with the JVM's defaults."""
    name = f"pod-{user}"
    # These servers live a few minutes: the quick JIT tier only and one GC thread cost far less
    # CPU than the defaults (nothing here measures speed; the harness's own tmpdir is kept).
    jvm = f"-Djava.io.tmpdir={workdir / name / 'local'}"
    conf = {POD_CONF: user, "spark.driver.extraJavaOptions":
            jvm + (" -XX:TieredStopAtLevel=1 -XX:+UseSerialGC" if lean else "")}
    if with_plugin is None:
        with_plugin = user in PLUGIN_USERS
    if with_plugin:
        conf.update({"spark.kbase.auth.url": pods_auth_url, "spark.kbase.auth.owner": user,
                     "spark.kbase.auth.requestTimeout": "5s"})
    # alice's pod serves the ~100 MB result.
    memory = "1g" if user == "alice" else "768m"
    return SparkServer(workdir, name, conf, with_plugin=with_plugin, driver_memory=memory)


def pod_of(spark) -> str:
    """Which pod a pyspark session's calls reach: the user the pod itself reports."""
    return spark.conf.get(POD_CONF)


def small_query(spark) -> list:
    df = spark.range(1, 6).selectExpr("id", "id * id AS square")
    return [tuple(r) for r in df.orderBy("id").collect()]


def session(url: str):
    from pyspark.sql import SparkSession

    return SparkSession.builder.remote(url).create()


def slow_rows(spark, rows: int, ms_per_row: int):
    """A query whose tasks sleep ``ms_per_row`` per row on the pod, in 2 partitions (the pods
    have 2 cores): its ExecutePlan stream stays open about rows × ms / 2 ms, then brings the
    ids 0 … rows-1."""
    return spark.range(0, rows, 1, 2).selectExpr(
        "id", f"reflect('java.lang.Thread', 'sleep', CAST({ms_per_row} AS BIGINT)) AS slept")


def ids(rows) -> list:
    return sorted(r.id for r in rows)


class InThread:
    """Runs ``fn`` in a daemon thread; ``join`` returns its result or raises what it raised."""

    def __init__(self, fn):
        self._result = None
        self._error = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn):
        try:
            self._result = fn()
        except BaseException as e:  # noqa: BLE001 - handed to join()
            self._error = e

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float):
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the client thread did not finish within {timeout:.0f}s")
        if self._error is not None:
            raise self._error
        return self._result


def wait_live_streams(gateway, at_least: int = 1, timeout: float = 60.0) -> None:
    """Waits until the gateway forwards at least ``at_least`` calls that have not ended."""
    harness.wait_until(lambda: gateway.metrics().value("kbase_gateway_live_streams") >= at_least,
                       timeout, 0.1, f"{at_least} live stream(s) through {gateway.name}")

