"""Runs last in this package (file order): no token handed out in this session appears in a
gateway's log or a pod's, and every gateway wrote its access lines."""

from __future__ import annotations

import pytest

import harness

pytestmark = pytest.mark.matrix  # every Spark version of the matrix (scripts/test.sh)


def test_gateway_no_token_in_any_log(topology, tokens):
    logs = [g.log_path for g in topology.started] + [s.log_path for s in topology.pods.values()]
    leaks = harness.secrets_in(logs, tokens.all())
    assert not leaks, "\n".join(leaks)
    assert topology.gateway.access_lines(), "the main gateway wrote no access line"
