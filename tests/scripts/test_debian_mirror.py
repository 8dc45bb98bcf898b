"""scripts/cross/debian_mirror.py and lib.sh's debian_mirror: which Debian mirror the build roots
come from. Fixtures use reserved example domains; one test compares with apt's own answer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts/cross/debian_mirror.py"
DEBIAN = "ID=debian\nVERSION_CODENAME=bookworm\n"

# What Debian 12 images ship (with the archive's host replaced), plus another vendor's repository.
DEBIAN_SOURCES = """\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
VENDOR_SOURCES = """\
Types: deb
URIs: https://vendor.example/node_20.x
Suites: nodistro
Components: main
"""


def run(tmp_path: Path, sources_list: str = "", parts: dict | None = None, os_release: str = DEBIAN):
    (tmp_path / "sources.list").write_text(sources_list)
    d = tmp_path / "sources.list.d"
    d.mkdir()
    for name, text in (parts or {}).items():
        (d / name).write_text(text)
    (tmp_path / "os-release").write_text(os_release)
    return subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "sources.list"), str(d),
                           str(tmp_path / "os-release")], capture_output=True, text=True, timeout=30)


def test_deb822_picks_the_archive_not_security_or_another_vendor(tmp_path):
    r = run(tmp_path, parts={"aaa-vendor.sources": VENDOR_SOURCES, "debian.sources": DEBIAN_SOURCES})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["http://mirror.example/debian", f"{tmp_path}/sources.list.d/debian.sources:1"]


def test_one_line_format_with_options_and_comments(tmp_path):
    r = run(tmp_path, sources_list=(
        "# deb http://old.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb http://mirror.example/debian-security bookworm-security main\n"
        "deb [ arch=amd64 signed-by=/usr/share/keyrings/x.gpg ] http://proxy.example:3142/debian/ bookworm main contrib  # site cache\n"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["http://proxy.example:3142/debian", f"{tmp_path}/sources.list:4"]


def test_apt_order_and_disabled_entries(tmp_path):
    disabled = DEBIAN_SOURCES.replace("http://mirror.example/debian\n", "http://first.example/debian\nEnabled: no\n", 1)
    r = run(tmp_path, parts={"a.sources": disabled, "b.list": "deb http://second.example/debian stable main\n",
                             "c.sources": DEBIAN_SOURCES, "d.list.disabled": "deb http://nope.example/debian sid main\n"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "http://second.example/debian"


def test_sources_list_comes_before_the_parts_directory(tmp_path):
    r = run(tmp_path, sources_list="deb http://main.example/debian trixie main\n", parts={"a.sources": DEBIAN_SOURCES})
    assert r.stdout.split()[0] == "http://main.example/debian", r.stderr


def test_a_release_newer_than_the_list_counts_on_that_release(tmp_path):
    r = run(tmp_path, sources_list="deb http://mirror.example/debian nextrelease main\n",
            os_release="ID=debian\nVERSION_CODENAME=nextrelease\n")
    assert r.stdout.split()[0] == "http://mirror.example/debian", r.stderr


def test_no_debian_archive_fails_saying_what_to_set(tmp_path):
    r = run(tmp_path, sources_list=("deb http://archive.example/ubuntu jammy main restricted\n"
                                    "deb http://mirror.example/debian bookworm-backports main\n"
                                    "deb mirror+file:/etc/apt/mirrors.txt bookworm main\n"),
            parts={"debian.sources": DEBIAN_SOURCES.replace("Components: main", "Components: contrib")},
            os_release='ID=ubuntu\nVERSION_CODENAME=jammy\n')
    assert r.returncode == 1 and r.stdout == ""
    assert "KBASE_DEBIAN_MIRROR" in r.stderr
    for why in ("suite jammy is not a Debian release", "suite bookworm-backports is not a Debian release",
                "is not one debootstrap can fetch from", "no main component"):
        assert why in r.stderr, r.stderr


def test_override_wins_and_no_mirror_is_needed_to_source_lib(tmp_path):
    env = {**os.environ, "KBASE_DEBIAN_MIRROR": "http://override.example/debian"}
    r = subprocess.run(["bash", "-c", f". {REPO}/scripts/cross/lib.sh && debian_mirror"], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["http://override.example/debian", "KBASE_DEBIAN_MIRROR"]


def test_agrees_with_apt_on_this_machine():
    """On a Debian machine whose apt has fetched its lists, the answer is the archive apt itself
    labels Debian (apt-get indextargets, from the Release files it downloaded)."""
    if not shutil.which("apt-get"):
        pytest.skip("no apt-get here: not a Debian-based machine")
    targets = subprocess.run(["apt-get", "indextargets", "--format", "$(REPO_URI) $(LABEL) $(TARGET_OF)",
                              "Identifier: Packages"], capture_output=True, text=True, timeout=60).stdout
    debian = {u.rstrip("/") for u, label, kind in (ln.split() for ln in targets.splitlines() if ln.count(" ") == 2)
              if label == "Debian" and kind == "deb"}
    if not debian:
        pytest.skip("apt has no fetched lists labelled Debian (apt-get update not run, or not Debian)")
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] in debian, (r.stdout, debian)
