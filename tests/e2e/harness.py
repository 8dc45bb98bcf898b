"""Process harness for the end-to-end tests: the fake Auth2, Spark Connect servers, nginx.

Every process is started in its own process group (``start_new_session``), logs to a file under
the run's work directory, is waited for with a bound, and is stopped by process group at the end
(pytest fixture finalizers, plus ``atexit`` for interpreter exits that skip them). Everything
listens on 127.0.0.1.
"""

from __future__ import annotations

import atexit
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
INTERCEPTOR_CLASS = "us.kbase.spark.KBaseAuthServerInterceptor"
# Upper bound on the life of every process the harness starts, even if the harness itself is
# killed before it can clean up (fake-auth2 --max-lifetime-secs, `timeout` around spark-submit).
MAX_SERVER_SECS = int(os.environ.get("KBASE_E2E_MAX_SERVER_SECS", "5400"))

# ----------------------------------------------------------------------------- locating things


def find_jar() -> Path:
    """The plugin jar: $KBASE_E2E_JAR, else build/libs/kbase-spark-auth-*.jar."""
    env = os.environ.get("KBASE_E2E_JAR")
    if env:
        p = Path(env).resolve()
        if not p.is_file():
            raise FileNotFoundError(f"KBASE_E2E_JAR={env} does not exist")
        return p
    cands = [
        Path(p)
        for p in sorted(glob.glob(str(REPO_ROOT / "build/libs/kbase-spark-auth-*.jar")))
        if not re.search(r"-(sources|javadoc|tests)\.jar$", p)
    ]
    if not cands:
        raise FileNotFoundError(
            "no build/libs/kbase-spark-auth-*.jar: run `gradle --offline build` (or scripts/test.sh) first"
        )
    return max(cands, key=lambda p: p.stat().st_mtime)


def _find_binary(env_var: str, name: str, build: str) -> Path:
    """A binary of this workspace: ${env_var}, else target/{release,debug}/{name}."""
    env = os.environ.get(env_var)
    if env:
        p = Path(env).resolve()
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise FileNotFoundError(f"{env_var}={env} is not an executable file")
        return p
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
    cands = [target / "release" / name, target / "debug" / name]
    existing = [c for c in cands if c.is_file() and os.access(c, os.X_OK)]
    if not existing:
        raise FileNotFoundError(f"no {name} binary: run `{build}` first")
    return max(existing, key=lambda p: p.stat().st_mtime)


def find_fake_auth2() -> Path:
    """The fake Auth2 binary: $KBASE_E2E_FAKE_AUTH2, else target/{release,debug}/fake-auth2."""
    return _find_binary("KBASE_E2E_FAKE_AUTH2", "fake-auth2", "cargo build --release -p fake-auth2")


def find_gateway() -> Path:
    """The gateway binary: $KBASE_E2E_GATEWAY, else target/{release,debug}/kbase-spark-gateway."""
    return _find_binary("KBASE_E2E_GATEWAY", "kbase-spark-gateway",
                        "cargo build --release -p kbase-spark-gateway")


def find_spark_home() -> Path:
    env = os.environ.get("SPARK_HOME")
    if env and (Path(env) / "bin/spark-submit").is_file():
        return Path(env)
    import pyspark

    home = Path(pyspark.__file__).resolve().parent
    if not (home / "bin/spark-submit").is_file():
        raise FileNotFoundError(f"{home}/bin/spark-submit missing: is pyspark installed fully?")
    return home


def find_java_home() -> Path:
    env = os.environ.get("JAVA_HOME")
    if env and (Path(env) / "bin/java").is_file():
        return Path(env)
    javac = shutil.which("javac") or shutil.which("java")
    if not javac:
        raise FileNotFoundError("no Java found: set JAVA_HOME to a Java 17 installation")
    return Path(os.path.realpath(javac)).parent.parent


# ----------------------------------------------------------------------------- small helpers


def new_work_dir(prefix: str, keep: int) -> Path:
    """A fresh directory .e2e-work/<prefix>-<time>-<pid> (keeping the newest `keep` - 1 older
    ones), holding a snapshot of the jar that KBASE_E2E_JAR then points at: a rebuild during the
    run must not change (or remove) the jar under us."""
    root = REPO_ROOT / ".e2e-work"
    root.mkdir(exist_ok=True)
    runs = sorted(p for p in root.glob(f"{prefix}-*") if p.is_dir())
    for old in runs[: max(0, len(runs) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    d = root / time.strftime(f"{prefix}-%Y%m%d-%H%M%S-{os.getpid()}")
    d.mkdir()
    jar = find_jar()
    snap = d / jar.name
    shutil.copy2(jar, snap)
    os.environ["KBASE_E2E_JAR"] = str(snap)
    return d


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fingerprint(token: str) -> str:
    """The plugin's token fingerprint: the first 8 hex characters of SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def new_token() -> str:
    """A fresh token shaped like a real KBase token (32 base32 characters)."""
    return "".join(secrets.choice(_B32) for _ in range(32))


class TokenRegistry:
    """Every secret the tests hand out, so the log check can look for all of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: set[str] = set()

    def new(self) -> str:
        t = new_token()
        self.add(t)
        return t

    def add(self, token: str) -> str:
        with self._lock:
            self._tokens.add(token)
        return token

    def all(self) -> list[str]:
        with self._lock:
            return sorted(self._tokens)


class ProcessExited(RuntimeError):
    """A process being waited for has exited: waiting longer cannot help."""


def wait_until(pred, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Polls ``pred`` until it returns a truthy value; raises TimeoutError after ``timeout`` s.
    Other exceptions from ``pred`` count as "not yet", except :class:`ProcessExited`."""
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except ProcessExited:
            raise
        except Exception as e:  # noqa: BLE001 - the predicate may fail while starting up
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


def secrets_in(paths: Iterable[Path], secrets: Sequence[str]) -> list:
    """One line per secret found in each file of ``paths`` (by fingerprint, never the secret)."""
    leaks = []
    for p in paths:
        try:
            text = Path(p).read_text(errors="replace")
        except OSError:
            continue
        leaks += [f"{p}: contains token with fingerprint {fingerprint(t)}" for t in secrets if t in text]
    return leaks


def tail(path: Path, n: int = 60) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"<no log at {path}>"
    return "\n".join(lines[-n:])


# ----------------------------------------------------------------------------- processes

_LIVE: "set[ManagedProcess]" = set()
_LIVE_LOCK = threading.Lock()


class ManagedProcess:
    """A child in its own process group, with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict, cwd: Path):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab", buffering=0)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(cwd),
            start_new_session=True,
        )
        self.pid = self.proc.pid
        with _LIVE_LOCK:
            _LIVE.add(self)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_exit(self, timeout: float) -> Optional[int]:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace: float = 15.0) -> Optional[int]:
        """SIGTERM to the process group, then SIGKILL after ``grace`` seconds."""
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout=10)
            # Anything left in the group we just signalled (e.g. nginx workers) goes too.
            self._signal_group(signal.SIGKILL)
        with _LIVE_LOCK:
            _LIVE.discard(self)
        try:
            self._log.close()
        except OSError:
            pass
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __hash__(self) -> int:
        return self.pid

    def __repr__(self) -> str:
        return f"<{self.name} pid={self.pid} log={self.log_path}>"


def stop_all(grace: float = 10.0) -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for p in procs:
        try:
            p.stop(grace=grace)
        except Exception as e:  # noqa: BLE001
            print(f"harness: failed to stop {p!r}: {e}", file=sys.stderr)


atexit.register(stop_all)


def base_env() -> dict:
    """The environment for children: ours minus anything that could leak into a decision."""
    env = dict(os.environ)
    for k in ("USER", "KBASE_AUTH_URL", "SPARK_CONNECT_AUTHENTICATE_TOKEN", "LOGNAME",
              "SPARK_CONF_DIR", "PYSPARK_SUBMIT_ARGS", "SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED",
              "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", "_JAVA_OPTIONS", "JAVA_TOOL_OPTIONS"):
        env.pop(k, None)
    return env


# ----------------------------------------------------------------------------- fake Auth2


class FakeAuth2:
    """The fake KBase Auth2 server (fake-auth2 binary) and its control API."""

    def __init__(self, workdir: Path, name: str, tokens: Iterable[dict], cachefor_ms: int = 300_000,
                 max_lifetime_secs: int = MAX_SERVER_SECS, extra_args: Sequence[str] = ()):
        self.name = name
        self.extra_args = list(extra_args)  # e.g. ["--tls-cert", CERT, "--tls-key", KEY]
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tokens_file = self.dir / "tokens.json"
        self.tokens_file.write_text(json.dumps({"cachefor": cachefor_ms, "tokens": list(tokens)}))
        self.ready_file = self.dir / "ready.json"
        self.ready_file.unlink(missing_ok=True)
        self.max_lifetime_secs = max_lifetime_secs
        self.proc: Optional[ManagedProcess] = None
        self.url = ""
        self.control_url = ""

    def start(self, timeout: float = 30.0) -> "FakeAuth2":
        binary = find_fake_auth2()
        argv = [str(binary), "--port", "0", "--control-port", "0", "--tokens", str(self.tokens_file),
                "--ready-file", str(self.ready_file), "--max-lifetime-secs", str(self.max_lifetime_secs),
                *self.extra_args]
        self.proc = ManagedProcess(f"fake-auth2[{self.name}]", argv, self.dir / "fake-auth2.log",
                                   base_env(), self.dir)

        def ready():
            if not self.proc.alive():
                raise ProcessExited(f"fake-auth2 exited with {self.proc.proc.returncode}:\n"
                                   f"{tail(self.proc.log_path)}")
            if self.ready_file.is_file():
                return json.loads(self.ready_file.read_text())
            return None

        info = wait_until(ready, timeout, 0.05, "fake-auth2 ready file")
        self.url = info["url"]
        self.control_url = info["control_url"].rstrip("/")
        self.health()
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop(grace=5)

    # -- control API
    def _call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.control_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"fake-auth2 control {method} {path}: {e.code} {e.read()[:300]!r}")
        ct = raw.decode()
        try:
            return json.loads(ct)
        except ValueError:
            return ct

    def health(self) -> None:
        assert self._call("GET", "/health") == "ok"

    def add_token(self, token: str, user: str, **fields) -> str:
        self._call("POST", "/tokens", {"token": token, "user": user, **fields})
        return token

    def revoke(self, token: str) -> None:
        self._call("POST", "/revoke", {"token": token})

    def fault(self, mode: str, delay_ms: Optional[int] = None) -> None:
        """Sets the fault mode (see `fake-auth2 --help`): none, refuse, delay, late_answer, status503,
        html502, malformed, nouser, ignore_expiry, status400html, status400json, drop_token, redirect."""
        body = {"mode": mode}
        if delay_ms is not None:
            body["delay_ms"] = delay_ms
        self._call("POST", "/fault", body)

    def counts(self) -> dict:
        return self._call("GET", "/counts")

    def count(self, token: str) -> int:
        return int(self.counts()["by_token"].get(token, 0))

    def total(self) -> int:
        return int(self.counts()["total"])

    def reset(self) -> None:
        self._call("POST", "/reset", {})

    def redirected(self) -> int:
        """Requests the redirect target (where the `redirect` fault points) has received."""
        return int(self.counts()["redirected"])


# ----------------------------------------------------------------------------- raw gRPC


@dataclass
class Outcome:
    code: "object"  # grpc.StatusCode
    details: str
    trailers: tuple
    elapsed: float

    @property
    def name(self) -> str:
        return getattr(self.code, "name", str(self.code))

    def __str__(self) -> str:
        return f"{self.name}: {self.details!r} trailers={self.trailers!r} ({self.elapsed * 1000:.0f} ms)"


_CHANNELS: dict = {}
_CHANNELS_LOCK = threading.Lock()


def channel(target: str, root_cert: Optional[bytes] = None):
    import grpc

    key = (target, root_cert)
    with _CHANNELS_LOCK:
        ch = _CHANNELS.get(key)
        if ch is None:
            opts = [("grpc.enable_retries", 0)]
            if root_cert is None:
                ch = grpc.insecure_channel(target, options=opts)
            else:
                creds = grpc.ssl_channel_credentials(root_certificates=root_cert)
                ch = grpc.secure_channel(target, creds, options=opts)
            _CHANNELS[key] = ch
        return ch


def close_channels() -> None:
    with _CHANNELS_LOCK:
        for ch in _CHANNELS.values():
            try:
                ch.close()
            except Exception:  # noqa: BLE001
                pass
        _CHANNELS.clear()


# One Spark session for all raw RPCs of this process: every new session_id makes the server
# create (and keep for its idle timeout) a whole SparkSession, which is not what these tests
# measure and, at soak volumes, exhausts the server's heap.
RAW_SESSION_ID = str(uuid.uuid4())


def config_request(session_id: Optional[str] = None, user_id: Optional[str] = "e2e"):
    """A ConfigRequest; ``user_id=None`` leaves the user context out, as pyspark does when it
    finds no SPARK_USER or USER."""
    from pyspark.sql.connect.proto import base_pb2

    request = base_pb2.ConfigRequest(
        session_id=session_id or RAW_SESSION_ID,
        operation=base_pb2.ConfigRequest.Operation(get_all=base_pb2.ConfigRequest.GetAll()),
    )
    if user_id is not None:
        request.user_context.user_id = user_id
    return request


def _stub(target: str, root_cert: Optional[bytes]):
    from pyspark.sql.connect.proto import base_pb2_grpc

    return base_pb2_grpc.SparkConnectServiceStub(channel(target, root_cert))


def config_rpc(target: str, metadata: Sequence[tuple] = (), timeout: float = 20.0,
               root_cert: Optional[bytes] = None, session_id: Optional[str] = None,
               user_id: Optional[str] = "e2e") -> Outcome:
    """One raw ``Config`` RPC with ``metadata``; returns the status, never raises RpcError."""
    import grpc

    stub = _stub(target, root_cert)
    t0 = time.monotonic()
    try:
        _, call = stub.Config.with_call(config_request(session_id, user_id), metadata=list(metadata),
                                        timeout=timeout)
        return Outcome(call.code(), call.details() or "", tuple(call.trailing_metadata() or ()),
                       time.monotonic() - t0)
    except grpc.RpcError as e:
        return Outcome(e.code(), e.details() or "", tuple(e.trailing_metadata() or ()),
                       time.monotonic() - t0)


def concurrent_config_rpcs(target: str, metadata: Sequence[tuple], n: int,
                           timeout: float = 30.0) -> list:
    """``n`` Config RPCs issued at once (futures on one HTTP/2 connection); their outcomes."""
    return concurrent_rpcs(target, [metadata] * n, timeout)


def concurrent_rpcs(target: str, metadatas: Sequence[Sequence[tuple]], timeout: float = 30.0) -> list:
    """One Config RPC per entry of ``metadatas``, all issued at once; their outcomes in order
    (``elapsed`` counts from the start of the whole batch)."""
    import grpc

    stub = _stub(target, None)
    t0 = time.monotonic()
    futs = [stub.Config.future(config_request(), metadata=list(m), timeout=timeout) for m in metadatas]
    out = []
    for f in futs:
        try:
            f.result()
            out.append(Outcome(f.code(), f.details() or "", tuple(f.trailing_metadata() or ()),
                               time.monotonic() - t0))
        except grpc.RpcError as e:
            out.append(Outcome(e.code(), e.details() or "", tuple(e.trailing_metadata() or ()),
                               time.monotonic() - t0))
    return out


def bearer(token: str) -> list:
    return [("authorization", f"Bearer {token}")]


def kbase(token: str) -> list:
    return [("x-kbase-token", token)]


# ----------------------------------------------------------------------------- Spark Connect

LOG4J2 = """\
# Written by tests/e2e/harness.py: Spark's defaults, on stderr, plus the plugin at INFO.
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss.SSS} %p %c{1}: %m%n%ex
logger.kbase.name = us.kbase
logger.kbase.level = info
logger.jetty.name = org.sparkproject.jetty
logger.jetty.level = warn
logger.parquet.name = org.apache.parquet
logger.parquet.level = error
logger.netty.name = io.netty
logger.netty.level = warn
logger.connections.name = org.sparkproject.connect.grpc.netty.shaded.io.grpc.netty
logger.connections.level = warn
"""


class Service:
    """A Spark Connect endpoint on 127.0.0.1:``port`` (a server, or the gateway) that the harness
    runs as a :class:`ManagedProcess` (``proc``) logging to ``log_path``."""

    proc: Optional[ManagedProcess] = None
    log_path: Path
    port: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, host: str = "localhost", **params) -> str:
        extra = "".join(f";{k}={v}" for k, v in params.items())
        return f"sc://{host}:{self.port}/{extra}"

    def wait_exit(self, timeout: float) -> Optional[int]:
        return self.proc.wait_exit(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class SparkServer(Service):
    """A Spark Connect 4.0 server started with spark-submit, our jar on --jars.

    Deployment tests set ``argv_prefix`` (e.g. setpriv), ``log4j_extra`` (more log4j2 lines) and
    ``cwd`` (the server's working directory, default its own directory) before ``start()``."""

    argv_prefix: Sequence[str] = ()
    log4j_extra: str = ""
    cwd: Optional[Path] = None

    def __init__(self, workdir: Path, name: str, conf: dict, env: Optional[dict] = None,
                 with_plugin: bool = True, driver_memory: str = "768m"):
        self.name = name
        self.dir = workdir / name
        self.conf_dir = self.dir / "conf"
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "local").mkdir(exist_ok=True)
        (self.dir / "warehouse").mkdir(exist_ok=True)
        self.user_conf = dict(conf)
        self.env_extra = dict(env or {})
        self.with_plugin = with_plugin
        self.driver_memory = driver_memory
        self.port = 0
        self.proc: Optional[ManagedProcess] = None
        self.log_path = self.dir / "spark.log"

    def _write_conf(self) -> None:
        conf = {
            "spark.master": "local[2]",
            "spark.app.name": f"kbase-e2e-{self.name}",
            "spark.driver.memory": self.driver_memory,
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.ui.enabled": "false",
            "spark.local.dir": str(self.dir / "local"),
            "spark.sql.warehouse.dir": str(self.dir / "warehouse"),
            "spark.sql.shuffle.partitions": "2",
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(self.port),
            "spark.connect.grpc.port.maxRetries": "0",
            "spark.driver.extraJavaOptions": f"-Djava.io.tmpdir={self.dir / 'local'}",
        }
        if self.with_plugin:
            conf["spark.connect.grpc.interceptor.classes"] = INTERCEPTOR_CLASS
        conf.update(self.user_conf)
        lines = ["# Written by tests/e2e/harness.py"]
        lines += [f"{k} {v}" for k, v in conf.items() if v is not None]
        (self.conf_dir / "spark-defaults.conf").write_text("\n".join(lines) + "\n")
        (self.conf_dir / "log4j2.properties").write_text(LOG4J2 + self.log4j_extra)

    def start(self) -> "SparkServer":
        spark_home = find_spark_home()
        self.port = free_port()
        self._write_conf()
        env = base_env()
        env.update({
            "SPARK_HOME": str(spark_home),
            "SPARK_CONF_DIR": str(self.conf_dir),
            "JAVA_HOME": str(find_java_home()),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_LOCAL_DIRS": str(self.dir / "local"),
        })
        env.update(self.env_extra)
        # `timeout` bounds the server's life even if this harness is killed before its cleanup.
        argv = ["timeout", "-k", "30", str(MAX_SERVER_SECS), str(spark_home / "bin/spark-submit"),
                "--class", "org.apache.spark.sql.connect.service.SparkConnectServer"]
        if self.with_plugin:
            argv += ["--jars", str(find_jar())]
        argv = [*self.argv_prefix, *argv, "--name", f"kbase-e2e-{self.name}", "spark-internal"]
        (self.dir / "argv.txt").write_text(" ".join(argv) + "\n")
        self.proc = ManagedProcess(f"spark[{self.name}]", argv, self.log_path, env, self.cwd or self.dir)
        return self

    def wait_ready(self, timeout: float = 120.0) -> "SparkServer":
        """Waits until the port answers a real RPC (any status but UNAVAILABLE counts)."""
        import grpc

        def ready():
            if not self.proc.alive():
                raise ServerExited(self)
            o = config_rpc(self.target, (), timeout=3)
            return o.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

        try:
            wait_until(ready, timeout, 0.5, f"Spark Connect server {self.name} on {self.target}")
        except ServerExited:
            raise
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n--- last log lines ({self.log_path}):\n{tail(self.log_path)}")
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop(grace=20)


class ServerExited(ProcessExited):
    def __init__(self, server: SparkServer):
        super().__init__(f"Spark server {server.name} exited with {server.proc.proc.returncode}:\n"
                         f"{tail(server.log_path)}")


def start_servers(servers: Sequence[SparkServer], timeout: float = 150.0) -> None:
    """Starts several servers at once (start-up is mostly waiting) and waits for all of them."""
    for s in servers:
        s.start()
    errors = []
    for s in servers:
        try:
            s.wait_ready(timeout)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    if errors:
        raise errors[0]


# ----------------------------------------------------------------------------- pyspark client


def spark_query(url: str) -> list:
    """Opens a new pyspark Connect session on ``url``, runs a small query, closes the session."""
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.remote(url).create()
    try:
        df = spark.range(1, 6).selectExpr("id", "id * id AS square")
        return [tuple(r) for r in df.orderBy("id").collect()]
    finally:
        try:
            spark.stop()
        except Exception:  # noqa: BLE001 - a denied session may fail to release
            pass


def pyspark_clients(urls: Sequence[str], conf_only: bool = False, env_extra: Optional[dict] = None,
                    timeout: float = 180) -> list:
    """Runs spark_client.py in one child process: for each of ``urls`` in turn a new pyspark
    session and a small query (``conf_only``: one config read). Returns a verdict per URL
    (``ok``, ``rows`` or ``error``, ``seconds``); URLs not answered when ``timeout`` s have
    passed (the child is killed then) get ``{"ok": False, "timed_out": True}``."""
    env = base_env()
    env.update(env_extra or {})
    argv = [sys.executable, str(Path(__file__).resolve().parent / "spark_client.py")]
    argv += ["--conf"] * conf_only + list(urls)
    try:
        r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        out, err, rc = r.stdout, r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err, rc = "", "killed"
    verdicts = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    assert verdicts or rc == "killed", f"no verdict from the client (rc={rc}):\n{out}\n{err[-3000:]}"
    missing = {"ok": False, "timed_out": True, "error": f"no verdict within {timeout} s", "seconds": None}
    return verdicts + [dict(missing) for _ in urls[len(verdicts):]]


def pyspark_client(url: str, env_extra: Optional[dict] = None, timeout: float = 180) -> dict:
    """:func:`pyspark_clients` for one URL and the small range query."""
    return pyspark_clients([url], env_extra=env_extra, timeout=timeout)[0]


def expect_pyspark_denied(action, code: str, *phrases: str, secrets: Sequence[str] = ()) -> str:
    """Runs ``action`` (pyspark client work, e.g. ``lambda: spark_query(url)``), which must fail
    with gRPC status ``code`` and a message containing every phrase (case-insensitive) and no
    secret; returns the error text."""
    try:
        action()
    except Exception as e:  # noqa: BLE001 - pyspark raises its own exception types
        msg = str(e)
    else:
        raise AssertionError(f"expected {code}, but the pyspark call succeeded")
    assert code in msg, f"expected {code} in: {msg}"
    for p in phrases:
        assert p.lower() in msg.lower(), f"expected {p!r} in: {msg}"
    for s in secrets:
        assert s not in msg, "a secret leaked into the client's error"
    return msg


# ----------------------------------------------------------------------------- TLS + nginx


def openssl_test_pki(d: Path) -> dict:
    """A throw-away CA and a server certificate for localhost / 127.0.0.1."""
    d.mkdir(parents=True, exist_ok=True)

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=kbase-e2e test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext")
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


def openssl_issue(pki: dict, d: Path, names: Sequence[str]) -> dict:
    """Another server certificate from the CA of ``pki`` (``openssl_test_pki``) for ``names``
    (DNS names; IP addresses as ``IP:a.b.c.d``); its ``cert`` and ``key`` paths."""
    d.mkdir(parents=True, exist_ok=True)

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    sans = ",".join(n if n.startswith("IP:") else f"DNS:{n}" for n in names)
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={names[0]}")
    (d / "server.ext").write_text(
        f"subjectAltName={sans}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", str(pki["ca"]), "-CAkey", str(Path(pki["ca"]).with_name("ca.key")),
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext")
    return {"ca": pki["ca"], "cert": d / "server.crt", "key": d / "server.key"}


def nginx_bin() -> str:
    """Debian's nginx: on PATH, else in /usr/sbin, which is not on an ordinary user's PATH."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin") or "nginx"


def nginx_version() -> tuple:
    out = subprocess.run([nginx_bin(), "-v"], capture_output=True, text=True, timeout=10)
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out.stderr + out.stdout)
    if not m:
        raise RuntimeError(f"cannot parse `nginx -v`: {out.stderr!r}")
    return tuple(int(x) for x in m.groups())


class NginxProxy:
    """Debian's nginx in the foreground: TLS + HTTP/2 on 127.0.0.1:port, grpc_pass to Spark; with
    ``pki=None`` plaintext HTTP/2 (prior knowledge), as a reference proxy for benchmarks."""

    def __init__(self, workdir: Path, name: str, upstream: str, pki: Optional[dict]):
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.upstream = upstream
        self.pki = pki
        self.port = 0
        self.proc: Optional[ManagedProcess] = None

    def start(self, timeout: float = 20.0) -> "NginxProxy":
        self.port = free_port()
        d = self.dir
        for sub in ("tmp", "logs"):
            (d / sub).mkdir(exist_ok=True)
        # Workers may run as an unprivileged user (nginx drops root); let them in.
        for p in (d, d / "tmp", d / "logs"):
            os.chmod(p, 0o755)
        ssl = " ssl" if self.pki else ""
        if nginx_version() >= (1, 25, 1):
            listen = f"listen 127.0.0.1:{self.port}{ssl};\n        http2 on;"
        else:
            listen = f"listen 127.0.0.1:{self.port}{ssl} http2;"
        tls = (f"ssl_certificate {self.pki['cert']};\n        ssl_certificate_key {self.pki['key']};\n"
               "        ssl_protocols TLSv1.2 TLSv1.3;") if self.pki else "# plaintext HTTP/2"
        conf = f"""\
# Written by tests/e2e/harness.py: TLS termination in front of Spark Connect's plaintext gRPC.
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/logs/access.log;
    client_body_temp_path {d}/tmp/client_body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        {listen}
        {tls}
        client_max_body_size 0;
        location / {{
            grpc_pass grpc://{self.upstream};
            grpc_read_timeout 300s;
            grpc_send_timeout 300s;
        }}
    }}
}}
"""
        conf_path = d / "nginx.conf"
        conf_path.write_text(conf)
        argv = [nginx_bin(), "-p", str(d), "-c", str(conf_path), "-e", str(d / "logs/error.log"),
                "-g", "daemon off;"]
        test = subprocess.run(argv[:-2] + ["-t"], capture_output=True, text=True, timeout=30)
        if test.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{test.stderr}")
        self.proc = ManagedProcess("nginx", ["timeout", "-k", "10", str(MAX_SERVER_SECS), *argv],
                                   d / "nginx.out", base_env(), d)

        def ready():
            if not self.proc.alive():
                raise ProcessExited(f"nginx exited:\n{tail(d / 'logs/error.log')}")
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_until(ready, timeout, 0.1, "nginx listening")
        return self

    def worker_pid(self) -> int:
        """The one worker's PID (a child of the master, which runs under `timeout`)."""
        (master,) = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        (worker,) = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return int(worker)

    def stop(self) -> None:
        if self.proc:
            self.proc.stop(grace=10)


# ----------------------------------------------------------------------------- the gateway

# The variables the gateway reads besides its own GATEWAY_* ones (BERDL's Python proxy's): a
# gateway started here gets them only from its test, never from the caller's environment.
GATEWAY_PROXY_VARIABLES = ("KBASE_AUTH_URL", "PROXY_LISTEN_PORT", "BACKEND_PORT", "BACKEND_NAMESPACE",
                           "SERVICE_TEMPLATE", "TOKEN_CACHE_TTL", "TOKEN_CACHE_MAX_SIZE", "REQUIRE_MFA",
                           "MFA_EXEMPT_USERS", "MAX_CHANNELS_PER_BACKEND", "BACKEND_CONNECT_TIMEOUT")


def gateway_env(env: dict) -> dict:
    """The environment of a gateway: ours without any gateway setting, plus ``env``."""
    out = {k: v for k, v in base_env().items()
           if not k.startswith("GATEWAY_") and k not in GATEWAY_PROXY_VARIABLES}
    out.update(env)
    return out


class Gateway(Service):
    """The gateway binary (kbase-spark-gateway) on 127.0.0.1, configured like a Deployment by
    environment variables (``env``) and flags (``args``). Its gRPC and admin ports are chosen at
    the first start and kept across restarts; every start appends to the same log."""

    def __init__(self, workdir: Path, name: str, env: dict, args: Sequence[str] = (), port: int = 0):
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(env)
        self.args = list(args)
        self.port = port  # 0: a free one
        self.admin_port = 0
        self.log_path = self.dir / "gateway.log"
        self.proc: Optional[ManagedProcess] = None

    def start(self, timeout: float = 30.0) -> "Gateway":
        """Starts the gateway (again, after it stopped) and waits until /readyz answers 200."""
        if self.proc:
            self.proc.stop(grace=5)
        self.port = self.port or free_port()
        self.admin_port = self.admin_port or free_port()
        env = gateway_env({"GATEWAY_BIND": "127.0.0.1", "PROXY_LISTEN_PORT": str(self.port),
                           "GATEWAY_ADMIN_PORT": str(self.admin_port), **self.env})
        argv = ["timeout", "-k", "10", str(MAX_SERVER_SECS), str(find_gateway()), *self.args]
        (self.dir / "argv.txt").write_text(" ".join(argv) + "\n")
        self.proc = ManagedProcess(f"gateway[{self.name}]", argv, self.log_path, env, self.dir)

        def ready():
            if not self.proc.alive():
                raise ProcessExited(f"gateway {self.name} exited with {self.proc.proc.returncode}:\n"
                                    f"{tail(self.log_path)}")
            return self.admin("/readyz")[0] == 200

        wait_until(ready, timeout, 0.05, f"gateway {self.name} ready")
        return self

    def admin(self, path: str, timeout: float = 5.0) -> tuple:
        """(HTTP status, body) of GET ``path`` on the admin port."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metrics(self) -> "Metrics":
        status, text = self.admin("/metrics")
        assert status == 200, f"/metrics answered {status}: {text[:300]}"
        return Metrics(text)

    def signal(self, sig: int) -> None:
        """Sends ``sig`` to the gateway's process group (the `timeout` wrapper passes TERM on)."""
        os.killpg(self.proc.pid, sig)

    def access_lines(self, **match) -> list:
        """The access lines of the log (one per call) as dicts, those whose fields equal ``match``."""
        out = []
        for line in self.log_text().splitlines():
            if "kbase_spark_gateway::access" not in line:
                continue
            fields = {k: v.strip('"') for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)}
            if all(fields.get(k) == v for k, v in match.items()):
                out.append(fields)
        return out

    def stop(self) -> None:
        if self.proc:
            self.proc.stop(grace=10)


def run_gateway(workdir: Path, name: str, env: dict, args: Sequence[str] = (),
                timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Runs the gateway binary to its exit (``--help``, a refused configuration), with only
    ``env``'s settings; the output is kept in the work directory too."""
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["timeout", "-k", "5", str(timeout), str(find_gateway()), *args],
                       env=gateway_env(env), cwd=d, capture_output=True, text=True, timeout=timeout + 10)
    (d / "gateway.log").write_text(r.stdout + r.stderr)
    return r


class Metrics:
    """A Prometheus/OpenMetrics text scrape: ``m.value("kbase_gateway_calls_total", status="OK")``
    sums the samples of that name whose labels include the given ones."""

    _LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
    _LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

    def __init__(self, text: str):
        self.text = text
        self.samples = []
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            m = self._LINE.match(line)
            assert m, f"not a metrics line: {line!r}"
            self.samples.append((m.group(1), dict(self._LABEL.findall(m.group(2) or "")), float(m.group(3))))

    def names(self) -> set:
        return {n for n, _, _ in self.samples}

    def value(self, name: str, **labels) -> float:
        return sum(v for n, ls, v in self.samples
                   if n == name and all(ls.get(k) == want for k, want in labels.items()))



# ----------------------------------------------------------------------------- assertions


def expect(outcome: Outcome, code: str, *phrases: str, secrets: Sequence[str] = (),
           proxy_keys: Iterable[str] = ()) -> Outcome:
    """Asserts the status code, that ``details`` contains every phrase (case-insensitive), that
    no secret leaks into details or trailers, and that a denial carries empty trailers (apart
    from ``proxy_keys``, headers a reverse proxy adds itself, e.g. nginx's server/date)."""
    assert outcome.name == code, f"expected {code}, got {outcome}"
    low = outcome.details.lower()
    for p in phrases:
        assert p.lower() in low, f"expected {p!r} in the status message, got {outcome}"
    flat = repr(outcome.trailers)
    for s in secrets:
        assert s not in outcome.details, f"secret leaked into the status message: {outcome}"
        assert s not in flat, f"secret leaked into the trailers: {outcome}"
    if code != "OK":
        extra = set(proxy_keys)
        rest = tuple(m for m in outcome.trailers if m[0] not in extra)
        assert rest == (), f"a denied call must carry empty trailers, got {outcome}"
    return outcome


# ----------------------------------------------------------------------------- floods


class TokenFlood:
    """``threads`` client threads sending raw Config RPCs, each with a new random well-formed
    token (registered, so the log checks look for them too) ``repeats`` times in a row (1: each
    token once, as a scan does), from ``with`` entry to exit. ``codes`` counts their statuses;
    ``seconds`` is how long it ran."""

    def __init__(self, target: str, registry: TokenRegistry, threads: int = 8, repeats: int = 1):
        self.target, self.registry, self.repeats = target, registry, repeats
        self.codes: dict = {}
        self.seconds = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            meta = bearer(self.registry.new())
            for _ in range(self.repeats):
                o = config_rpc(self.target, meta, timeout=30)
                with self._lock:
                    self.codes[o.name] = self.codes.get(o.name, 0) + 1

    def __enter__(self) -> "TokenFlood":
        self._started = time.monotonic()
        for th in self._threads:
            th.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(60)
        self.seconds = time.monotonic() - self._started

    @property
    def calls(self) -> int:
        return sum(self.codes.values())
