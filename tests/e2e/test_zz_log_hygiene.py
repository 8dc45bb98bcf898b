"""Runs last (file order): no token handed out in this session appears in any server log."""

from __future__ import annotations

import pytest

import harness

pytestmark = pytest.mark.matrix  # every Spark version of the matrix (scripts/test.sh)


def test_no_token_in_any_server_log(all_servers, tokens, workdir):
    secrets = tokens.all()
    if not secrets:
        pytest.skip("no other e2e test ran in this session")
    logs = [s.log_path for s in all_servers if s.log_text()]
    assert logs, "no server logs found"
    # nginx, the gateways and any other log under the work directory too.
    logs += [p for p in workdir.rglob("*.log")
             if "fake-" not in p.parent.name]  # the fake Auth2 is test equipment, not the product
    leaks = harness.secrets_in(logs, secrets)
    assert not leaks, "\n".join(sorted(set(leaks)))
