"""Runs where KBase runs it: the Spark version under test, the order of configured interceptors,
a `noexec` temporary directory, and a hardened pod (unprivileged user, no USER, no writable HOME).

Each test checks the condition it claims through the kernel's view of the running server
(/proc/PID/{status,environ,mountinfo,maps}), not only through the outcome.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
import zipfile
from pathlib import Path

import pytest

import deployment
import harness
from deployment import (LOGGING_INTERCEPTOR, NOBODY, PROBE_CLASS, PROBE_HEADER, SETPRIV, Tmpfs,
                        java_pid, mapped_files, mount_options, probe_saw, process_status,
                        unusable_by_nobody)
from harness import INTERCEPTOR_CLASS, SparkServer, bearer, config_rpc, expect, kbase, start_servers
from test_decisions import EXPECTED_ROWS

LIB = "libkbase_spark_auth.so"
EXIT_TIMEOUT_S = 150
ORDER_WARNING = "interceptor order:"
ORDER_ADVICE = f"list {INTERCEPTOR_CLASS} last"


def _conf(main, **extra) -> dict:
    conf = {"spark.kbase.auth.url": main.fake.url, "spark.kbase.auth.owner": "alice"}
    conf.update(extra)
    return conf


def _startup_line(log: str) -> str:
    line = next((ln for ln in log.splitlines() if re.search(r"KBase auth(?: \S+)?: url=", ln)), None)
    assert line, "no start-up line 'KBase auth <version>: url=...' in the log"
    return line


# ----------------------------------------------------------------------------- the version under test


@pytest.mark.matrix
def test_server_and_client_are_the_spark_version_under_test(main):
    """The matrix really runs the Spark it names: the server's jars, the server's own report and
    the pyspark client agree (scripts/test.sh sets KBASE_E2E_SPARK_VERSION for each run)."""
    import pyspark
    from pyspark.sql import SparkSession

    jars = sorted((harness.find_spark_home() / "jars").glob("spark-connect_2.13-*.jar"))
    assert len(jars) == 1, jars
    server_jars = re.fullmatch(r"spark-connect_2\.13-(.+)\.jar", jars[0].name).group(1)
    assert pyspark.__version__ == server_jars
    want = os.environ.get("KBASE_E2E_SPARK_VERSION")
    if want:
        assert server_jars == want, f"asked for Spark {want}, running {server_jars}"
    assert f"Running Spark version {server_jars}" in main.server.log_text()
    spark = SparkSession.builder.remote(main.server.url("localhost", token=main.t["alice"])).create()
    try:
        assert spark.version == server_jars
    finally:
        spark.stop()


def test_startup_line_names_the_plugin_version(main):
    """`KBase auth <version>: url=...` (the jar's version) in the start-up line."""
    line = _startup_line(main.server.log_text())
    assert f"KBase auth {deployment.plugin_version()}: url=" in line, line


@pytest.mark.matrix
def test_startup_line_names_the_libraries_the_jar_carries(main, tmp_path):
    """The start-up line ends with the platforms the jar carries and the glibc each needs. The
    truth is the jar's own entries and, for each library, the newest GLIBC_ version its ELF
    version needs name (readelf -V), not the manifest the line is read from."""
    want = set()
    with zipfile.ZipFile(harness.find_jar()) as jar:
        for name in jar.namelist():
            m = re.fullmatch(r"us/kbase/spark/native/([^/]+)/" + re.escape(LIB), name)
            if m:
                lib = Path(jar.extract(name, tmp_path))
                out = subprocess.run(["readelf", "-V", "--wide", str(lib)], capture_output=True,
                                     text=True, timeout=60, check=True).stdout
                needed = max((tuple(int(x) for x in v.split(".")) for v in re.findall(r"\bGLIBC_([\d.]+)\b", out)))
                want.add(f"{m.group(1)} (glibc >= {'.'.join(map(str, needed))})")
    assert want, "the jar holds no native library"
    line = _startup_line(main.server.log_text())
    m = re.search(r"; native libraries in the jar: (.+)$", line)
    assert m, line
    assert set(m.group(1).split(", ")) == want, line


# ----------------------------------------------------------------------------- interceptor order


@pytest.fixture(scope="module")
def order_servers(workdir, main, all_servers):
    """Two servers with Spark's LoggingInterceptor and the test-only order probe beside ours:
    ``ours-last`` (the recommended list: ours last, so it sees every call first) and
    ``ours-first`` (ours listed first, the others after it)."""
    probe = deployment.build_probe_jar(workdir)
    lists = {
        "ours-last": f"{PROBE_CLASS},{LOGGING_INTERCEPTOR},{INTERCEPTOR_CLASS}",
        "ours-first": f"{INTERCEPTOR_CLASS},{LOGGING_INTERCEPTOR},{PROBE_CLASS}",
    }
    servers = {}
    for name, classes in lists.items():
        s = SparkServer(workdir, f"order-{name}", _conf(main, **{
            "spark.connect.grpc.interceptor.classes": classes,
            "spark.driver.extraClassPath": str(probe),
        }), driver_memory="512m")
        # LoggingInterceptor logs each request message and response at INFO; the probe logs at
        # INFO when a call reaches it. Both explicitly on, whatever the root level.
        s.log4j_extra = (f"logger.sparklog.name = {LOGGING_INTERCEPTOR}\nlogger.sparklog.level = info\n"
                         f"logger.probe.name = {PROBE_CLASS}\nlogger.probe.level = info\n")
        servers[name] = s
    all_servers.extend(servers.values())
    try:
        start_servers(list(servers.values()))
        yield servers
    finally:
        for s in servers.values():
            s.stop()


def _tagged_config(server: SparkServer, metadata: list, code: str, *phrases: str) -> tuple:
    """A Config call carrying a fresh probe id and its own session id (which LoggingInterceptor
    prints with the request); asserts the outcome; returns (probe id, session id)."""
    call_id, session = uuid.uuid4().hex, str(uuid.uuid4())
    expect(config_rpc(server.target, [*metadata, (PROBE_HEADER, call_id)], session_id=session),
           code, *phrases)
    return call_id, session


def _logged_by_logging_interceptor(log: str, session: str) -> bool:
    return re.search(r"Received RPC request spark\.connect\.SparkConnectService/Config \(id \d+\):\n"
                     r"\{[^}]*\"session_id\": \"" + re.escape(session) + '"', log) is not None


@pytest.mark.matrix
def test_interceptor_listed_last_sees_every_call_first(order_servers, main):
    """classes=Probe,LoggingInterceptor,ours: a call without a token is denied before either
    of the other two sees it; the owner's call goes through all three."""
    s = order_servers["ours-last"]
    denied_id, denied_session = _tagged_config(s, [], "UNAUTHENTICATED", "missing KBase token")
    ok_id, ok_session = _tagged_config(s, bearer(main.t["alice"]), "OK")
    # Log lines are written synchronously, in order: once the later call's lines are there,
    # the denied call's would be too.
    harness.wait_until(lambda: probe_saw(s.log_text(), ok_id)
                       and _logged_by_logging_interceptor(s.log_text(), ok_session),
                       20, 0.2, "the probe and LoggingInterceptor to log the owner's call")
    log = s.log_text()
    assert not probe_saw(log, denied_id), "the probe (listed before ours) saw a call ours denied"
    assert denied_session not in log, "LoggingInterceptor (listed before ours) saw a denied call"


@pytest.mark.matrix
def test_interceptor_listed_after_ours_sees_calls_before_authentication(order_servers):
    """classes=ours,LoggingInterceptor,Probe: the probe, listed last, sees a call without a
    token before ours denies it (gRPC runs the last added interceptor first). LoggingInterceptor
    cannot show this: it logs request messages and responses only, and a denied call never gets
    its message delivered, in either order."""
    s = order_servers["ours-first"]
    denied_id, denied_session = _tagged_config(s, [], "UNAUTHENTICATED", "missing KBase token")
    harness.wait_until(lambda: probe_saw(s.log_text(), denied_id), 20, 0.2,
                       "the probe to log the call without a token")
    assert denied_session not in s.log_text()


@pytest.mark.matrix
def test_order_warning_when_an_interceptor_is_listed_after_ours(order_servers):
    lines = [ln for ln in order_servers["ours-first"].log_text().splitlines() if ORDER_WARNING in ln]
    assert len(lines) == 1, f"expected one '{ORDER_WARNING}' line, got {lines}"
    assert " WARN " in lines[0] and LOGGING_INTERCEPTOR in lines[0] and ORDER_ADVICE in lines[0], lines[0]


@pytest.mark.matrix
def test_no_order_warning_when_ours_is_listed_last(order_servers):
    log = order_servers["ours-last"].log_text()
    _startup_line(log)  # the plugin did start up (and would have warned by now)
    assert ORDER_WARNING not in log


# ----------------------------------------------------------------------------- noexec temporary dirs


@pytest.fixture(scope="module")
def noexec_servers(workdir, main, all_servers):
    """Two servers, each with its own noexec tmpfs (mounted here, unmounted at the end):

    * ``fallback``: java.io.tmpdir on the noexec tmpfs, SPARK_LOCAL_DIRS usable;
    * ``nowhere``: every directory the loader tries is on the noexec tmpfs.
    """
    with Tmpfs(workdir / "mnt-noexec-tmpdir", "noexec,nosuid,size=64m,mode=0755") as tmpdir, \
            Tmpfs(workdir / "mnt-noexec-all", "noexec,nosuid,size=64m,mode=0755") as all_noexec:
        fallback = SparkServer(workdir, "noexec-tmpdir", _conf(main, **{
            "spark.driver.extraJavaOptions": f"-Djava.io.tmpdir={tmpdir}"}), driver_memory="512m")
        dirs = {k: all_noexec / k for k in ("kbase-tmpdir", "java-tmpdir", "spark-local-dirs",
                                            "spark-local-dir", "cwd")}
        for d in dirs.values():
            d.mkdir()
        nowhere = SparkServer(workdir, "noexec-everywhere", _conf(main, **{
            "spark.driver.extraJavaOptions": f"-Djava.io.tmpdir={dirs['java-tmpdir']} "
                                             f"-Dkbase.spark.auth.tmpdir={dirs['kbase-tmpdir']}",
            "spark.local.dir": str(dirs["spark-local-dir"])}),
            env={"SPARK_LOCAL_DIRS": str(dirs["spark-local-dirs"])}, driver_memory="512m")
        nowhere.cwd = dirs["cwd"]
        all_servers.extend([fallback, nowhere])
        try:
            fallback.start()
            nowhere.start()
            code = nowhere.wait_exit(EXIT_TIMEOUT_S)
            fallback.wait_ready(EXIT_TIMEOUT_S)
            yield {"fallback": (fallback, tmpdir), "nowhere": (nowhere, dirs, code)}
        finally:
            fallback.stop()
            nowhere.stop()


@pytest.mark.slow
def test_noexec_tmpdir_falls_back_to_spark_local_dirs(noexec_servers, main):
    s, tmpdir = noexec_servers["fallback"]
    local = s.dir / "local"  # SPARK_LOCAL_DIRS (harness default)
    pid = java_pid(s)
    opts = mount_options(Path(f"/proc/{pid}/mountinfo"), tmpdir)
    assert opts and "noexec" in opts and "fstype=tmpfs" in opts, opts
    assert f"-Djava.io.tmpdir={tmpdir}" in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")

    expect(config_rpc(s.target, []), "UNAUTHENTICATED", "missing KBase token")
    expect(config_rpc(s.target, bearer(main.t["bob"])), "PERMISSION_DENIED", "bob", "alice")
    assert harness.spark_query(s.url("localhost", token=main.t["alice"])) == EXPECTED_ROWS

    # The kernel's view: the library's code is mapped from a private directory under
    # SPARK_LOCAL_DIRS (deleted once loaded), from nowhere else. (glibc leaves the read-only
    # first segment of the failed attempt in the noexec directory mapped; never executable.)
    maps = mapped_files(pid, LIB)
    code = [m for m, perms in maps.items() if any("x" in p for p in perms)]
    assert len(code) == 1, maps
    assert re.fullmatch(re.escape(str(local)) + r"/kbase-spark-auth-[^/]+/" + re.escape(LIB)
                        + r" \(deleted\)", code[0]), maps
    assert all(m.startswith(str(local) + "/") or m.startswith(str(tmpdir) + "/") for m in maps), maps
    assert not any("kbase-spark-auth" in p.name for p in tmpdir.iterdir()), list(tmpdir.iterdir())
    warn = [ln for ln in s.log_text().splitlines() if "after 1 unusable directory" in ln]
    assert len(warn) == 1 and " WARN " in warn[0], warn
    assert f"loaded {LIB} from {local} (SPARK_LOCAL_DIRS) after 1 unusable directory: 1) {tmpdir} " \
           f"(java.io.tmpdir): System.load failed: failed to map segment from shared object (the file " \
           f"system is probably mounted noexec); set -Dkbase.spark.auth.tmpdir=DIR" in warn[0], warn[0]


@pytest.mark.slow
def test_library_loadable_nowhere_names_every_directory(noexec_servers):
    s, dirs, code = noexec_servers["nowhere"]
    log = s.log_text()
    assert code is not None, f"the server did not exit within {EXIT_TIMEOUT_S}s:\n{log[-3000:]}"
    assert code != 0 and "Spark Connect server started" not in log, log[-3000:]
    line = next((ln for ln in log.splitlines() if "no usable directory to extract it to" in ln), None)
    assert line, f"no loader error in the log:\n{log[-4000:]}"
    tried = [("kbase-tmpdir", "-Dkbase.spark.auth.tmpdir"), ("java-tmpdir", "java.io.tmpdir"),
             ("spark-local-dirs", "SPARK_LOCAL_DIRS"), ("spark-local-dir", "spark.local.dir"),
             ("cwd", "working directory")]
    for i, (key, source) in enumerate(tried, 1):
        assert f"{i}) {dirs[key]} ({source}): System.load failed: failed to map segment from " \
               "shared object (the file system is probably mounted noexec)" in line, (key, line)
    assert f"{len(tried) + 1}) " not in line, line
    assert "Set -Dkbase.spark.auth.tmpdir=DIR to a writable directory that is not mounted noexec" in line
    for d in dirs.values():
        assert not any("kbase-spark-auth" in p.name for p in d.iterdir()), f"left behind in {d}"


# ----------------------------------------------------------------------------- hardened pod


@pytest.fixture(scope="module")
def hardened(workdir, main, all_servers):
    """Spark as uid/gid 65534 with no supplementary groups, no USER, HOME=/nonexistent (not
    writable), the owner only in spark-defaults.conf, spark.jars.ivy in a writable directory."""
    if os.geteuid() != 0:
        pytest.skip("running Spark as uid 65534 (setpriv) needs root")
    s = SparkServer(workdir, "hardened", _conf(main), env={"HOME": "/nonexistent"},
                    driver_memory="512m")
    ivy = s.dir / "ivy"
    ivy.mkdir()
    s.user_conf["spark.jars.ivy"] = str(ivy)
    s.argv_prefix = [*SETPRIV, "--"]
    # Spark Connect creates artifacts/ in its working directory: it must be writable (as
    # /opt/spark/work-dir is in apache/spark), unlike HOME.
    s.cwd = s.dir / "work"
    s.cwd.mkdir()
    # What the server user must read (root's files stay root's): the test's own directories
    # and files, whatever the umask; the directories it writes become its own.
    for d in (workdir.parent, workdir, s.dir, s.conf_dir):
        d.chmod(0o755)
    harness.find_jar().chmod(0o644)
    for d in (s.dir / "local", s.dir / "warehouse", ivy, s.cwd):
        os.chown(d, NOBODY, NOBODY)
        d.chmod(0o700)
    spark_home, java_home = harness.find_spark_home(), harness.find_java_home()
    # conf files are written by start(); check them after it.
    bad = unusable_by_nobody({
        "spark-submit": (spark_home / "bin/spark-submit", "-x"),
        "Spark's jars": (next((spark_home / "jars").glob("spark-core_2.13-*.jar")), "-r"),
        "java": (java_home / "bin/java", "-x"),
        "the plugin jar": (harness.find_jar(), "-r"),
        "spark.local.dir": (s.dir / "local", "-w"),
    })
    if bad:
        pytest.fail("the unprivileged server user cannot use: " + "; ".join(bad) + ". The hardened-pod "
                    "test needs the venv (SPARK_HOME), Java and the repository readable by other users, "
                    "as /opt/spark is in apache/spark (check the permissions of their parent directories).")
    assert unusable_by_nobody({"HOME": ("/nonexistent", "-w")}), "HOME must not be writable for the test"
    all_servers.append(s)
    try:
        s.start()
        assert not unusable_by_nobody({"spark-defaults.conf": (s.conf_dir / "spark-defaults.conf", "-r")})
        s.wait_ready(EXIT_TIMEOUT_S)
        yield s
    finally:
        s.stop()


@pytest.mark.slow
@pytest.mark.matrix
def test_hardened_pod_runs_as_an_unprivileged_user(hardened):
    st = process_status(java_pid(hardened))
    assert st["Uid"] == [str(NOBODY)] * 4 and st["Gid"] == [str(NOBODY)] * 4, st
    assert st.get("Groups", []) == [], st
    assert "USER" not in st["environ"] and "LOGNAME" not in st["environ"], sorted(st["environ"])
    assert st["environ"].get("HOME") == "/nonexistent"
    assert "owner=alice" in _startup_line(hardened.log_text())


@pytest.mark.slow
@pytest.mark.matrix
def test_hardened_pod_admits_only_the_owner(hardened, main):
    url = hardened.url("localhost", **{"x-kbase-token": main.t["alice"]})
    assert harness.spark_query(url) == EXPECTED_ROWS
    expect(config_rpc(hardened.target, kbase(main.t["alice"])), "OK")
    expect(config_rpc(hardened.target, bearer(main.t["bob"])), "PERMISSION_DENIED", "bob", "alice",
           secrets=[main.t["bob"]])
    expect(config_rpc(hardened.target, []), "UNAUTHENTICATED", "missing KBase token")
