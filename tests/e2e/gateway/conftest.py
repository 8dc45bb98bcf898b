"""The gateway's end-to-end topology, shared by every test of this package (and stopped when the
package's last test is done, before the rest of the suite starts its own servers):

* pods (Spark Connect servers from this run's pyspark, one per user, each reporting its user in
  the conf key ``spark.kbase.e2e.pod``): ``alice``, ``bob`` and ``carol`` with our plugin (owner
  = that user); ``jane_doe``'s WITHOUT any interceptor (so only the gateway can refuse a call to
  it), under the host KubeSpawner's escaping gives her, ``jupyter-jane-5fdoe…``;
* ``erin``, a user whose host points at a port where nothing listens (her notebook server is
  not running);
* two fake Auth2 servers: the gateway's and the pods' plugins', so that each counts only its own
  client's lookups (every token is known to both);
* the gateway, started with BERDL's Python proxy's environment (``SERVICE_TEMPLATE``,
  ``BACKEND_NAMESPACE``, ``BACKEND_PORT``, ``REQUIRE_MFA``, ``MFA_EXEMPT_USERS=bob``, …) plus one
  ``--resolve HOST:15002=127.0.0.1:PORT`` per pod. Tests that need another configuration start
  their own gateway in front of the same pods (``start_gateway``): a gateway starts in
  milliseconds, a pod in ten seconds.

The matrix subset uses alice's pod only, and a run of it starts no other (``pods_needed``).
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

import harness
from harness import FakeAuth2, Gateway

from .topology import NO_POD_USER, PLAIN_USER, PLUGIN_USERS, Topology, make_pod


def pods_needed(session) -> tuple:
    """alice's pod serves every test of the matrix subset; the other pods start only when this
    package runs a test outside that subset (the whole suite's run), which spares each matrix run
    three servers' start and warm-up."""
    here = Path(__file__).resolve().parent
    mine = [i for i in session.items if here in Path(i.path).resolve().parents]
    if mine and all(i.get_closest_marker("matrix") for i in mine):
        return ("alice",)
    return (*PLUGIN_USERS, PLAIN_USER)


@pytest.fixture(scope="package")
def topology(request, workdir, tokens, all_servers):
    auth = FakeAuth2(workdir, "fake-gateway-auth2", []).start()
    pods_auth = FakeAuth2(workdir, "fake-pods-auth2", []).start()
    pods = {u: make_pod(workdir, u, pods_auth.url) for u in pods_needed(request.session)}
    all_servers.extend(pods.values())
    topo = Topology(workdir, tokens, auth, pods_auth, pods, harness.free_port())
    try:
        harness.start_servers(list(pods.values()))
        topo.t = {
            "alice": topo.token("alice"),
            "bob": topo.token("bob", mfa="NotUsed"),  # exempt from MFA (MFA_EXEMPT_USERS)
            "carol": topo.token("carol"),
            "jane_doe": topo.token(PLAIN_USER),
            "erin": topo.token(NO_POD_USER),
            "alice_nomfa": topo.token("alice", mfa="NotUsed"),
            "carol_mfa_unknown": topo.token("carol", mfa=None),
        }
        topo.gateway = topo.new_gateway("gateway").start()
        yield topo
    finally:
        for g in topo.started:
            g.stop()
        for s in pods.values():
            s.stop()
        auth.stop()
        pods_auth.stop()


def collect_sessions() -> None:
    """Finalizes this test's (stopped) pyspark sessions now, in this thread. pyspark 4.0's
    SparkSession.__del__ shuts down the release pool shared by every session and waits for it;
    run by the garbage collector inside one of that pool's own threads, it waits for itself and
    every later session's clean-up hangs (seen here: a later test stuck for its whole timeout)."""
    gc.collect()


@pytest.fixture
def gw(topology) -> Topology:
    """The topology, with both Auth2 fakes left without a fault after the test."""
    yield topology
    collect_sessions()
    for fake in (topology.auth, topology.pods_auth):
        try:
            fake.fault("none")
        except Exception:  # noqa: BLE001
            pass


@pytest.fixture
def start_gateway(topology):
    """``start_gateway(name, env, extra_hosts, port)``: another gateway in front of the same pods,
    stopped at the end of the test."""
    mine = []

    def start(name: str, env: dict = None, extra_hosts: dict = None, port: int = 0) -> Gateway:
        g = topology.new_gateway(name, env, extra_hosts, port).start()
        mine.append(g)
        return g

    yield start
    collect_sessions()  # while the gateways still answer the sessions' clean-up calls
    for g in mine:
        g.stop()
