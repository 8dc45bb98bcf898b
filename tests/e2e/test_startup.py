"""Configurations that must stop the Connect server from starting (fail closed), with a message
naming the setting; and the optional trusted-address bypass."""

from __future__ import annotations

import json
import urllib.request

import pytest

from harness import SparkServer, bearer, config_rpc, expect, free_port, start_servers

EXIT_TIMEOUT_S = 150

BAD_CONFIGS = {
    # name: (spark conf, extra env, names of the setting: the log must contain one of them)
    "no-owner": ({"spark.kbase.auth.url": "http://127.0.0.1:9/"}, {},
                 ["spark.kbase.auth.owner"]),
    "bad-url": ({"spark.kbase.auth.url": "http://[bad", "spark.kbase.auth.owner": "alice"}, {},
                ["spark.kbase.auth.url"]),
    "negative-ttl": ({"spark.kbase.auth.url": "http://127.0.0.1:9/",
                      "spark.kbase.auth.owner": "alice",
                      "spark.kbase.auth.cache.maxTtl": "-5s"}, {},
                     ["spark.kbase.auth.cache.maxTtl"]),
    "duration-without-unit": ({"spark.kbase.auth.url": "http://127.0.0.1:9/",
                               "spark.kbase.auth.owner": "alice",
                               "spark.kbase.auth.requestTimeout": "5"}, {},
                              ["spark.kbase.auth.requestTimeout"]),
    "unknown-key": ({"spark.kbase.auth.url": "http://127.0.0.1:9/",
                     "spark.kbase.auth.owner": "alice",
                     "spark.kbase.auth.requireMFA": "true"}, {},
                    ["spark.kbase.auth.requireMFA"]),
    "bad-env-url": ({"spark.kbase.auth.owner": "alice"}, {"KBASE_AUTH_URL": "not a url"},
                    ["KBASE_AUTH_URL", "spark.kbase.auth.url"]),
}


@pytest.fixture(scope="module")
def failed_starts(workdir, all_servers):
    """Starts every bad configuration at once and waits (bounded) for each to exit."""
    servers = {}
    for name, (conf, env, _) in BAD_CONFIGS.items():
        s = SparkServer(workdir, f"badconf-{name}", conf, env=env, driver_memory="512m")
        servers[name] = s
        all_servers.append(s)
        s.start()
    codes = {name: s.wait_exit(EXIT_TIMEOUT_S) for name, s in servers.items()}
    yield {name: (servers[name], codes[name]) for name in servers}
    for s in servers.values():
        s.stop()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_bad_configuration_refuses_to_start(failed_starts, name):
    server, code = failed_starts[name]
    log = server.log_text()
    assert code is not None, f"{name}: the server did not exit within {EXIT_TIMEOUT_S}s"
    assert code != 0, f"{name}: exit code 0\n{log[-3000:]}"
    assert "Spark Connect server started" not in log, f"{name}: the server started anyway"
    names = BAD_CONFIGS[name][2]
    assert any(n in log for n in names), f"{name}: the log names none of {names}:\n{log[-4000:]}"


@pytest.mark.slow
@pytest.mark.matrix
def test_trusted_addresses(workdir, main, all_servers):
    """trustedAddresses=127.0.0.1 lets token-less calls from loopback through (off by default,
    a documented hazard behind a same-host proxy) while tokens that are present still count.
    The same server has its UI on, to check the plugin's counters in Spark's metrics system."""
    ui_port = free_port()
    s = SparkServer(workdir, "trusted", {
        "spark.kbase.auth.url": main.fake.url,
        "spark.kbase.auth.owner": "alice",
        "spark.kbase.auth.trustedAddresses": "127.0.0.1",
        "spark.ui.enabled": "true",
        "spark.ui.port": str(ui_port),
        "spark.port.maxRetries": "0",
    }, driver_memory="512m")
    all_servers.append(s)
    try:
        start_servers([s])
        expect(config_rpc(s.target, []), "OK")
        expect(config_rpc(s.target, bearer(main.t["alice"])), "OK")
        # A token that is present is still checked.
        expect(config_rpc(s.target, bearer(main.t["bob"])), "PERMISSION_DENIED", "bob", "alice")
        expect(config_rpc(s.target, [("x-kbase-token", "a b")]), "UNAUTHENTICATED", "malformed")

        # The counters, as Spark's own metrics servlet reports them (source "kbaseAuth").
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/metrics/json/", timeout=20) as r:
            gauges = json.load(r)["gauges"]
        kbase = {k.split(".kbaseAuth.", 1)[1]: v["value"] for k, v in gauges.items() if ".kbaseAuth." in k}
        assert kbase, f"no kbaseAuth gauges among {sorted(gauges)[:20]}"
        assert kbase["allowed"] >= 2, kbase
        assert kbase["denied.user_not_allowed"] >= 1, kbase
        assert kbase["denied.malformed_token"] >= 1, kbase
        assert kbase["auth2Requests"] >= 1, kbase
        for counter in ("refreshes", "staleAllows", "denied.too_many_new_tokens", "auth2FailFast"):
            assert kbase[counter] == 0, kbase
    finally:
        s.stop()
