"""Runs last (file order): no token handed out in this session appears in any server log."""

from __future__ import annotations

import pytest

import harness

pytestmark = pytest.mark.matrix  # every Spark version of the matrix (scripts/test.sh)


def test_no_token_in_any_server_log(all_servers, tokens, workdir):
    secrets = tokens.all()
    if not secrets:
        pytest.skip("no other e2e test ran in this session")
    checked = 0
    leaks = []
    for s in all_servers:
        text = s.log_text()
        if not text:
            continue
        checked += 1
        for t in secrets:
            if t in text:
                leaks.append(f"{s.log_path}: contains token with fingerprint {harness.fingerprint(t)}")
    assert checked, "no server logs found"
    # nginx and any other log under the work directory too (access/error logs of the proxy).
    for p in workdir.rglob("*.log"):
        if "fake-" in p.parent.name:  # the fake Auth2 is test equipment, not the product
            continue
        text = p.read_text(errors="replace")
        for t in secrets:
            if t in text:
                leaks.append(f"{p}: contains token with fingerprint {harness.fingerprint(t)}")
    assert not leaks, "\n".join(sorted(set(leaks)))
