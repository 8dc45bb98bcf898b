"""The `sc://` URLs KBase's clients use, beside the `token=` cases of test_decisions.py and
test_tls_proxy.py:

* the notebook, on the pod itself: `sc://localhost:15002/;x-kbase-token=T` (plaintext);
* the remote client (`spark_connect_remote`): `sc://HOST:443/;use_ssl=true;x-kbase-token=T`
  through the TLS proxy, with a host that is not the literal `localhost`.
"""

from __future__ import annotations

import pytest

from harness import spark_query
from test_decisions import EXPECTED_ROWS
from test_tls_proxy import proxy, run_client  # noqa: F401 - proxy is a fixture used below

pytestmark = pytest.mark.matrix


def test_notebook_style_x_kbase_token_on_localhost(main):
    assert spark_query(main.server.url("localhost", **{"x-kbase-token": main.t["alice"]})) == EXPECTED_ROWS


def test_notebook_style_other_user_denied(main):
    with pytest.raises(Exception) as ei:
        spark_query(main.server.url("localhost", **{"x-kbase-token": main.t["bob"]}))
    msg = str(ei.value)
    assert "PERMISSION_DENIED" in msg and "bob" in msg and "alice" in msg, msg
    assert main.t["bob"] not in msg


def test_remote_style_use_ssl_x_kbase_token(proxy, main):  # noqa: F811
    """Host 127.0.0.1 (in the proxy certificate's names), not `localhost`: what a remote client
    does with a real host name."""
    v = run_client(f"sc://127.0.0.1:{proxy.port}/;use_ssl=true;x-kbase-token={main.t['alice']}",
                   proxy.ca_path)
    assert v["ok"], v
    assert [tuple(r) for r in v["rows"]] == EXPECTED_ROWS


def test_remote_style_other_user_denied(proxy, main):  # noqa: F811
    v = run_client(f"sc://127.0.0.1:{proxy.port}/;use_ssl=true;x-kbase-token={main.t['bob']}",
                   proxy.ca_path)
    assert not v["ok"], v
    assert "PERMISSION_DENIED" in v["error"] and "bob" in v["error"] and "alice" in v["error"], v
    assert main.t["bob"] not in v["error"]
