"""Helpers for the deployment tests (test_deployment.py): tmpfs mounts, an unprivileged server
user, the kernel's view of a running server (uid, environment, mounts, mapped libraries), and a
test-only interceptor that shows the order in which Spark's interceptors see a call.

Everything here runs as root in CI (mounting and changing user need it); where that is
impossible the test is skipped with the reason, never passed.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Optional

import pytest

import harness

# The unprivileged account the hardened-pod test runs Spark as: nobody/nogroup on Debian.
NOBODY = 65534
SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
LOGGING_INTERCEPTOR = "org.apache.spark.sql.connect.service.LoggingInterceptor"
PROBE_CLASS = "us.kbase.e2e.OrderProbeInterceptor"
PROBE_HEADER = "x-e2e-call"
PROBE_SOURCE = Path(__file__).resolve().parent / "probe/OrderProbeInterceptor.java"


def plugin_version() -> str:
    """The plugin version, from the jar's name (kbase-spark-auth-<version>.jar)."""
    m = re.fullmatch(r"kbase-spark-auth-(.+)\.jar", harness.find_jar().name)
    assert m, harness.find_jar()
    return m.group(1)


# ----------------------------------------------------------------------------- mounts


class Tmpfs:
    """``with Tmpfs(dir, "noexec,size=64m") as d:`` mounts a tmpfs on ``dir`` (created if need
    be) and unmounts it on exit (lazily if it is still busy). Skips the test, saying why, where
    mounting is impossible (not root, no CAP_SYS_ADMIN)."""

    def __init__(self, path: Path, options: str):
        self.path = path
        self.options = options
        self.mounted = False

    def __enter__(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", self.options, "tmpfs", str(self.path)],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs ({self.options}) on {self.path}: "
                        f"{(r.stderr or r.stdout).strip()} (needs root or CAP_SYS_ADMIN)")
        self.mounted = True
        opts = mount_options(Path("/proc/self/mountinfo"), self.path)
        assert opts is not None, f"{self.path} is not a mount point after mount"
        return self.path

    def __exit__(self, *exc) -> None:
        if not self.mounted:
            return
        r = subprocess.run(["umount", str(self.path)], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=60)
        self.mounted = False


def mount_options(mountinfo: Path, mount_point: Path) -> Optional[set]:
    """The options (per-mount and super block) of the mount at ``mount_point`` in a
    /proc/*/mountinfo file, or None when nothing is mounted there."""
    found = None
    for line in mountinfo.read_text().splitlines():
        f = line.split()
        if f[4] == str(mount_point):
            sep = f.index("-")
            found = set(f[5].split(",")) | set(f[sep + 3].split(",")) | {f"fstype={f[sep + 1]}"}
    return found  # the last one wins: it is the one on top


# ----------------------------------------------------------------------------- a running server


def java_pid(server: harness.SparkServer, timeout: float = 60.0) -> int:
    """The PID of the server's JVM: the `java` process in its process group."""

    def find():
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
                pgrp = int(stat.rsplit(")", 1)[1].split()[2])
                if pgrp == server.proc.pid and os.readlink(d / "exe").endswith("/bin/java"):
                    return int(d.name)
            except (OSError, ValueError, IndexError):
                continue
        return None

    return harness.wait_until(find, timeout, 0.5, f"the JVM of {server.name}")


def mapped_files(pid: int, name: str) -> dict:
    """{path: set of permission strings} of the mappings of files called ``name`` (``name
    (deleted)`` once unlinked) in process ``pid``; "r-xp" marks mapped code."""
    out: dict = {}
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        f = line.split(maxsplit=5)
        if len(f) == 6 and (f[5].endswith("/" + name) or f[5].endswith("/" + name + " (deleted)")):
            out.setdefault(f[5], set()).add(f[1])
    return out


def process_status(pid: int) -> dict:
    """The uid/gid lines of /proc/PID/status and its environment."""
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("Uid", "Gid", "Groups"):
            status[k] = v.split()
    env = {}
    for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if b"=" in kv:
            k, _, v = kv.partition(b"=")
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    status["environ"] = env
    return status


def unusable_by_nobody(paths: dict) -> list:
    """Which of ``paths`` ({what: (path, test flag)}) the unprivileged user cannot use, checked
    by running `test` as that user (-r readable, -x executable or traversable, -w writable)."""
    bad = []
    for what, (path, flag) in paths.items():
        r = subprocess.run([*SETPRIV, "test", flag, str(path)], capture_output=True, timeout=30)
        if r.returncode != 0:
            bad.append(f"{what} ({path}: test {flag} fails as uid {NOBODY})")
    return bad


# ----------------------------------------------------------------------------- the order probe


def build_probe_jar(workdir: Path) -> Path:
    """Compiles the test-only OrderProbeInterceptor against this Spark's own jars (shaded gRPC,
    SLF4J) and packs it; the result goes on a server's spark.driver.extraClassPath."""
    out = workdir / "order-probe"
    classes = out / "classes"
    classes.mkdir(parents=True, exist_ok=True)
    java_home = harness.find_java_home()
    spark_jars = harness.find_spark_home() / "jars"
    r = subprocess.run([str(java_home / "bin/javac"), "--release", "17", "-proc:none",
                        "-cp", str(spark_jars / "*"), "-d", str(classes), str(PROBE_SOURCE)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"javac OrderProbeInterceptor failed:\n{r.stderr[-3000:]}"
    jar = out / "order-probe.jar"
    r = subprocess.run([str(java_home / "bin/jar"), "cf", str(jar), "-C", str(classes), "."],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"jar failed:\n{r.stderr[-2000:]}"
    return jar


def probe_saw(log: str, call_id: str) -> bool:
    return f"order-probe saw spark.connect.SparkConnectService/Config call={call_id}" in log
