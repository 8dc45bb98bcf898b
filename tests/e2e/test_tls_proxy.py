"""The production topology: a TLS-terminating reverse proxy (Debian's nginx, grpc_pass) in front
of Spark Connect's plaintext port, and clients with `use_ssl=true;token=...`."""

from __future__ import annotations

from pathlib import Path

import pytest

import harness
from harness import NginxProxy, bearer, config_rpc, expect, kbase
from test_decisions import EXPECTED_ROWS

pytestmark = pytest.mark.matrix  # every Spark version of the matrix (scripts/test.sh)



@pytest.fixture(scope="module")
def proxy(workdir, main):
    pki = harness.openssl_test_pki(workdir / "pki")
    p = NginxProxy(workdir, "nginx", main.target, pki).start()
    p.ca_pem = Path(pki["ca"]).read_bytes()
    p.ca_path = pki["ca"]
    yield p
    p.stop()


def run_client(url: str, ca_path: Path, timeout: float = 180) -> dict:
    return harness.pyspark_client(url, {"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(ca_path)}, timeout)


def test_owner_through_tls_proxy(proxy, main):
    v = run_client(f"sc://localhost:{proxy.port}/;use_ssl=true;token={main.t['alice']}", proxy.ca_path)
    assert v["ok"], v
    assert [tuple(r) for r in v["rows"]] == EXPECTED_ROWS


def test_other_user_through_tls_proxy(proxy, main):
    v = run_client(f"sc://localhost:{proxy.port}/;use_ssl=true;token={main.t['bob']}", proxy.ca_path)
    assert not v["ok"], v
    assert "PERMISSION_DENIED" in v["error"] and "bob" in v["error"] and "alice" in v["error"], v
    assert main.t["bob"] not in v["error"]


def test_x_kbase_token_through_tls_proxy(proxy, main):
    url = f"sc://localhost:{proxy.port}/;use_ssl=true;x-kbase-token={main.t['alice']}"
    v = run_client(url, proxy.ca_path)
    assert v["ok"], v


def test_untrusted_ca_is_refused(proxy, main, tmp_path):
    """Sanity check of the setup: without the test CA the client cannot connect at all."""
    other = harness.openssl_test_pki(tmp_path / "other-pki")
    target = f"localhost:{proxy.port}"
    o = config_rpc(target, bearer(main.t["alice"]), timeout=10, root_cert=Path(other["ca"]).read_bytes())
    assert o.name == "UNAVAILABLE", str(o)


def test_raw_grpc_through_proxy(proxy, main):
    """nginx passes `authorization` and `x-kbase-token` through, adds none, and the denial
    statuses and empty trailers survive the proxy."""
    target = f"localhost:{proxy.port}"
    ca = proxy.ca_pem
    # nginx adds its own response headers to a trailers-only answer; nothing else may appear.
    nginx_keys = {"server", "date", "content-length"}
    expect(config_rpc(target, bearer(main.t["alice"]), root_cert=ca), "OK")
    expect(config_rpc(target, kbase(main.t["alice"]), root_cert=ca), "OK")
    expect(config_rpc(target, [], root_cert=ca), "UNAUTHENTICATED", "missing KBase token",
           proxy_keys=nginx_keys)
    expect(config_rpc(target, bearer(main.t["bob"]), root_cert=ca), "PERMISSION_DENIED", "bob",
           "alice", secrets=[main.t["bob"]], proxy_keys=nginx_keys)
    expect(config_rpc(target, kbase(main.t["bob"]), root_cert=ca), "PERMISSION_DENIED", "bob",
           secrets=[main.t["bob"]], proxy_keys=nginx_keys)
