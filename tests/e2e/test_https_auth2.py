"""Auth2 over HTTPS, as in production (`https://kbase.us/services/auth/`): the fake Auth2 serves
TLS with a certificate from a CA this test creates, and four Spark Connect servers differ only
in how (or whether) they trust it:

* ``spark.kbase.auth.caBundle`` names the CA          -> the owner is allowed;
* the system store's standard override, ``SSL_CERT_FILE`` -> allowed;
* nothing trusts it (the system store only)           -> UNAVAILABLE, and the server log names
  the certificate problem;
* the CA is trusted but the certificate is for another host -> UNAVAILABLE.

In the last two the token never reaches the fake: TLS fails before any HTTP request.
"""

from __future__ import annotations

import pytest

import harness
from harness import FakeAuth2, SparkServer, bearer, config_rpc, expect

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's system store, without our CA


@pytest.fixture(scope="module")
def https(workdir, tokens, all_servers):
    pki = harness.openssl_test_pki(workdir / "auth2-pki")
    wrong = harness.openssl_issue(pki, workdir / "auth2-pki-wrong-host", ["auth.example.org"])
    owner = tokens.new()
    entry = [{"token": owner, "user": "alice"}]

    def tls_args(p):
        return ["--tls-cert", str(p["cert"]), "--tls-key", str(p["key"])]

    good = FakeAuth2(workdir, "fake-https", entry, extra_args=tls_args(pki)).start()
    other_host = FakeAuth2(workdir, "fake-https-wrong-host", entry, extra_args=tls_args(wrong)).start()
    assert good.url.startswith("https://"), good.url

    def url(fake):  # the certificate names localhost (and 127.0.0.1); use the DNS name
        return fake.url.replace("127.0.0.1", "localhost")

    def server(name, fake, conf=None, env=None):
        c = {"spark.kbase.auth.url": url(fake), "spark.kbase.auth.owner": "alice",
             "spark.kbase.auth.connectTimeout": "2s", "spark.kbase.auth.requestTimeout": "3s"}
        c.update(conf or {})
        # Every server names its system store explicitly, so the outer environment cannot add a CA.
        e = {"SSL_CERT_FILE": SYSTEM_BUNDLE}
        e.update(env or {})
        return SparkServer(workdir, name, c, env=e, driver_memory="512m")

    servers = {
        "ca_bundle": server("https-cabundle", good, {"spark.kbase.auth.caBundle": str(pki["ca"])}),
        "ssl_cert_file": server("https-ssl-cert-file", good, env={"SSL_CERT_FILE": str(pki["ca"])}),
        "untrusted": server("https-untrusted", good),
        "wrong_host": server("https-wrong-host", other_host, {"spark.kbase.auth.caBundle": str(pki["ca"])}),
    }
    all_servers.extend(servers.values())
    try:
        harness.start_servers(list(servers.values()))
        yield {"servers": servers, "token": owner, "good": good, "other_host": other_host}
    finally:
        for s in servers.values():
            s.stop()
        good.stop()
        other_host.stop()


pytestmark = pytest.mark.slow


@pytest.mark.parametrize("how", ["ca_bundle", "ssl_cert_file"])
def test_trusted_https_auth2_allows_the_owner(https, how):
    s = https["servers"][how]
    before = https["good"].count(https["token"])
    expect(config_rpc(s.target, bearer(https["token"])), "OK")
    assert https["good"].count(https["token"]) == before + 1, "validated over HTTPS by the fake"


def _denial_detail(server: SparkServer, fp: str) -> str:
    return harness.wait_until(
        lambda: next((ln for ln in server.log_text().splitlines()
                      if fp in ln and "status=UNAVAILABLE" in ln), None),
        15, 0.2, f"the UNAVAILABLE log line for token {fp}")


@pytest.mark.parametrize("how,problem", [
    ("untrusted", "invalid peer certificate: UnknownIssuer"),
    ("wrong_host", "certificate not valid for name \"localhost\""),
], ids=["trusted-by-nothing", "wrong-host"])
def test_untrusted_https_auth2_is_unavailable_naming_the_certificate_problem(https, how, problem):
    s = https["servers"][how]
    fake = https["good"] if how == "untrusted" else https["other_host"]
    t = https["token"]
    before = fake.count(t)  # the trusted servers' requests, if they ran first
    expect(config_rpc(s.target, bearer(t)), "UNAVAILABLE", "KBase auth service unavailable", secrets=[t])
    assert fake.count(t) == before, "no HTTP request (so no token) may reach a server that is not trusted"
    line = _denial_detail(s, harness.fingerprint(t))
    assert problem in line, f"the log line does not name the certificate problem: {line}"
    assert "WARN" in line, line
    assert t not in s.log_text()
