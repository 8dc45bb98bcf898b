"""docker/: the images' recipes and the Kubernetes example against the code they ship.

No Docker engine or cluster exists where these tests run, so nothing here builds an image or applies
a manifest. Instead every file the recipes copy or name, every variable, port, flag and probe path
is checked against its source of truth: the build's output (build/gateway/<platform>/, the jar),
scripts/cross/lib.sh's platform names, and the built gateway binary itself (its --help, its
start-up line, its admin port's answers), so that the recipes cannot drift from the code.

Needs the build's output: run after `gradle build` (scripts/test.sh does).
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
GATEWAY_DOCKERFILE = DOCKER / "gateway.Dockerfile"
PLUGIN_DOCKERFILE = DOCKER / "Dockerfile"
K8S = DOCKER / "k8s/gateway.yaml"
PROGRAM = "kbase-spark-gateway"
# The gateway's resident memory goal (README "Gateway"; docs/PERFORMANCE.md): the Deployment must
# request at least this much.
RSS_GOAL_MIB = 64
# glibc of the base images the gateway image may use; the binaries' floor must not exceed it.
BASE_GLIBC = {"debian:bookworm-slim": (2, 36), "debian:trixie-slim": (2, 41)}
START_TIMEOUT_S = 30


# ----------------------------------------------------------------------------- sources of truth


def lib_sh(function: str, *args: str) -> str:
    """A function of scripts/cross/lib.sh, run: the build's own names for platforms."""
    r = subprocess.run(["bash", "-c", '. scripts/cross/lib.sh && "$@"', "lib.sh", function, *args],
                       cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"lib.sh {function} {args}: {r.stderr}"
    return r.stdout.strip()


def shipped_platforms() -> list:
    """The platforms lib.sh knows (rust_target's cases): what the cross build makes."""
    text = (REPO / "scripts/cross/lib.sh").read_text()
    body = re.search(r"rust_target\(\) \{(.*?)\n\}", text, re.S).group(1)
    return re.findall(r"^\s*(linux-[\w-]+)\)", body, re.M)


def cargo_version(manifest: Path) -> str:
    return re.search(r'(?m)^\[package\][^\[]*?^version\s*=\s*"([^"]+)"', manifest.read_text()).group(1)


def built_gateway_platforms() -> dict:
    """{platform: highest GLIBC_ version needed}, from the build's own report (checkGatewayGlibc)."""
    report = REPO / "build/gateway-glibc-check.txt"
    if not report.is_file():
        pytest.fail(f"{report} is missing: build the gateway first (gradle --offline assemble, or "
                    "scripts/test.sh, which runs these tests after the build)")
    found = {}
    for line in report.read_text().splitlines():
        m = re.match(r"(\S+) needs GLIBC_([\d.]+)", line)
        assert m, f"unexpected line in {report}: {line}"
        found[m.group(1)] = tuple(int(x) for x in m.group(2).split("."))
    return found


@dataclass
class Help:
    """What `kbase-spark-gateway --help` says: each setting's flag and default, by variable."""
    flags: dict = field(default_factory=dict)     # variable -> flag (without --)
    defaults: dict = field(default_factory=dict)  # variable -> default as shown
    python: list = field(default_factory=list)    # the Python proxy's variables, in order
    text: str = ""


def parse_help(text: str) -> Help:
    h = Help(text=text)
    section = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith(" "):
            section = line
        m = re.match(r"  --([\w-]+) \S+  \[(\w+)(?:, repeatable)?\]$", line)
        if m:
            flag, env = m.groups()
            d = re.search(r"\(default: (.*)\)$", lines[i + 1])
            assert d, f"no default after {line!r}"
            h.flags[env], h.defaults[env] = flag, d.group(1)
            if section.startswith("The Python proxy's variables"):
                h.python.append(env)
    assert h.python and len(h.flags) > len(h.python), text
    return h


@pytest.fixture(scope="module")
def gateway() -> Path:
    """The host's gateway binary, where the build puts it (and the image's COPY takes it)."""
    path = REPO / "build/gateway" / lib_sh("host_platform") / PROGRAM
    if not (path.is_file() and path.stat().st_mode & 0o111):
        pytest.fail(f"{path} is missing: build it first (gradle --offline assemble, or scripts/test.sh)")
    return path


@pytest.fixture(scope="module")
def help_(gateway) -> Help:
    r = subprocess.run([str(gateway), "--help"], capture_output=True, text=True, timeout=30, env={})
    assert r.returncode == 0, r.stderr
    return parse_help(r.stdout)


class Running:
    """The gateway binary started with `env` on loopback (ports chosen by the system, so the flags
    override the ports and bind address of `env`); stopped with SIGTERM."""

    def __init__(self, gateway: Path, env: dict, log: Path):
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [str(gateway), "--bind", "127.0.0.1", "--listen-port", "0", "--admin-port", "0"],
                env={**env, "PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=out)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            text = log.read_text()
            m = re.search(r"listening grpc=(\S+) admin=(\S+)", text)
            if m:
                self.grpc, self.admin = m.groups()
                self.settings = dict(re.findall(r"(\w+)=(\S*)",
                                                re.search(r" starting: (.*)$", text, re.M).group(1)))
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the gateway did not start with this environment ({env}):\n{text}")
            time.sleep(0.05)

    def get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise


@pytest.fixture
def start(gateway, tmp_path):
    started = []

    def run(env: dict) -> Running:
        g = Running(gateway, env, tmp_path / f"gateway-{len(started)}.log")
        started.append(g)
        return g

    yield run
    for g in started:
        g.stop()


# ----------------------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    name: str    # upper case
    args: str
    stage: str   # the stage it belongs to ("" before the first FROM)


def parse_dockerfile(path: Path) -> list:
    """Instructions with continuation lines joined and comments dropped."""
    out, stage, pending = [], "", ""
    for raw in path.read_text().splitlines():
        if not pending and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if pending and raw.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        name, _, args = line.partition(" ")
        name = name.upper()
        if name == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?$", args.strip(), re.I)
            stage = m.group(2) or m.group(1)
        out.append(Instruction(name, args.strip(), stage))
    assert not pending, f"{path} ends inside a continued line"
    return out


def env_of(instructions: list) -> dict:
    env = {}
    for ins in instructions:
        if ins.name == "ENV":
            for word in shlex.split(ins.args):
                k, sep, v = word.partition("=")
                assert sep, f"ENV {ins.args!r}: use the KEY=VALUE form"
                env[k] = v
    return env


def copies(instructions: list) -> list:
    """(stage, [--options], sources, destination) of each COPY/ADD."""
    out = []
    for ins in instructions:
        if ins.name in ("COPY", "ADD"):
            words = shlex.split(ins.args)
            opts = [w for w in words if w.startswith("--")]
            rest = [w for w in words if not w.startswith("--")]
            out.append((ins.stage, opts, rest[:-1], rest[-1]))
    return out


def dockerignore_keeps(path: str) -> bool:
    """Whether the root .dockerignore (`*`, then `!PREFIX` exceptions) sends `path` to the daemon."""
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*" and all(ln.startswith("!") for ln in lines[1:]), \
        f".dockerignore: this test understands '*' followed by '!PREFIX' lines only: {lines}"
    return any(path == ln[1:].rstrip("/") or path.startswith(ln[1:].rstrip("/") + "/") for ln in lines[1:])


@pytest.fixture(scope="module")
def dockerfile() -> list:
    return parse_dockerfile(GATEWAY_DOCKERFILE)


def test_image_copies_each_platforms_binary_from_the_build(dockerfile):
    """One stage per platform of the build, named by Docker's TARGETARCH for it (Debian's arch names,
    lib.sh's debian_arch), each copying that platform's binary from where the build puts it; the
    final stage takes the one of the platform being built. Every binary the build made is copied
    and exists; the .dockerignore sends it."""
    platforms = shipped_platforms()
    assert platforms == ["linux-x86_64", "linux-aarch64"], platforms
    built = built_gateway_platforms()
    assert set(built) <= set(platforms), built
    global_args = [i.args for i in dockerfile if i.name == "ARG" and i.stage == ""]
    assert "TARGETARCH" in global_args, "ARG TARGETARCH must come before the first FROM"
    by_stage = {}
    for stage, opts, sources, dest in copies(dockerfile):
        if stage.startswith("binary-"):
            assert not opts and len(sources) == 1 and dest == f"/{PROGRAM}", (stage, sources, dest)
            by_stage[stage] = sources[0]
    want = {f"binary-{lib_sh('debian_arch', p)}": f"build/gateway/{p}/{PROGRAM}" for p in platforms}
    assert by_stage == want
    for p in built:
        source = REPO / want[f"binary-{lib_sh('debian_arch', p)}"]
        assert source.is_file() and source.stat().st_mode & 0o111, f"the build made {p}'s binary, but {source} is not there"
        assert dockerignore_keeps(str(source.relative_to(REPO))), f".dockerignore leaves out {source}"
    froms = [i.args for i in dockerfile if i.name == "FROM"]
    assert "binary-${TARGETARCH} AS binary" in froms, froms


def test_image_runs_the_copied_binary_as_a_non_root_user(dockerfile):
    final = dockerfile[-1].stage
    final_copies = [(opts, sources, dest) for stage, opts, sources, dest in copies(dockerfile) if stage == final]
    assert final_copies == [(["--from=binary"], [f"/{PROGRAM}"], f"/usr/local/bin/{PROGRAM}")], final_copies
    entrypoint = [json.loads(i.args) for i in dockerfile if i.name == "ENTRYPOINT" and i.stage == final]
    assert entrypoint == [[f"/usr/local/bin/{PROGRAM}"]], entrypoint
    user = [i.args for i in dockerfile if i.name == "USER" and i.stage == final]
    assert len(user) == 1 and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[0]), \
        f"USER must be one numeric uid:gid other than root (Kubernetes' runAsNonRoot checks it): {user}"


def test_image_base_has_the_glibc_the_binaries_need(dockerfile):
    base = [i.args for i in dockerfile if i.name == "FROM"][-1]
    assert base in BASE_GLIBC, f"final base {base}: add its glibc to BASE_GLIBC once checked"
    for platform, needs in built_gateway_platforms().items():
        assert needs <= BASE_GLIBC[base], f"{platform}'s binary needs glibc {needs}, {base} has {BASE_GLIBC[base]}"


def test_image_environment_is_the_python_proxys_defaults(dockerfile, help_, start):
    """ENV holds every variable of the Python proxy and only settings the gateway knows; started
    with exactly that environment, the real binary's effective settings are its defaults."""
    env = env_of(dockerfile)
    assert set(help_.python) <= set(env), f"missing: {set(help_.python) - set(env)}"
    unknown = set(env) - set(help_.flags)
    assert not unknown, f"ENV names variables the gateway does not read: {unknown}"
    with_image_env, with_nothing = start(env), start({})
    assert with_image_env.settings == with_nothing.settings


def test_image_exposes_the_ports_its_environment_gives(dockerfile, help_):
    env = env_of(dockerfile)
    ports = {int(env.get(v, help_.defaults[v])) for v in ("PROXY_LISTEN_PORT", "GATEWAY_ADMIN_PORT")}
    exposed = {int(p.split("/")[0]) for i in dockerfile if i.name == "EXPOSE" for p in i.args.split()}
    assert exposed == ports


def test_files_named_in_the_recipes_exist():
    """Repository paths named in docker/'s gateway files (comments included) exist."""
    for f in (GATEWAY_DOCKERFILE, K8S):
        for path in re.findall(r"(?<![\w/.])((?:docker|scripts|tests|gateway|docs)/[\w./-]*\w)", f.read_text()):
            assert (REPO / path).exists(), f"{f.relative_to(REPO)} names {path}, which does not exist"


def test_plugin_image_copies_what_the_build_makes():
    """docker/Dockerfile (the plugin's image): its COPY sources exist (the jar of this version,
    the configuration files), the .dockerignore sends them, and its port is the one its
    spark-defaults.conf binds."""
    ins = parse_dockerfile(PLUGIN_DOCKERFILE)
    args = dict(i.args.split("=", 1) for i in ins if i.name == "ARG" and "=" in i.args)
    assert args.get("PLUGIN_VERSION") == cargo_version(REPO / "Cargo.toml"), args
    for _, _, sources, _ in copies(ins):
        for s in sources:
            path = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], s)
            assert (REPO / path).is_file(), f"docker/Dockerfile copies {path}, which the build did not make"
            assert dockerignore_keeps(path), f".dockerignore leaves out {path}"
    conf = (DOCKER / "spark-defaults.conf").read_text()
    port = re.search(r"(?m)^spark\.connect\.grpc\.binding\.port\s+(\d+)", conf).group(1)
    assert [i.args for i in ins if i.name == "EXPOSE"] == [port]


# ----------------------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def k8s() -> dict:
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert sorted(kinds) == ["Deployment", "Service"] and len(docs) == 2, [d["kind"] for d in docs]
    return kinds


def container(k8s) -> dict:
    cs = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(cs) == 1, cs
    return cs[0]


def k8s_env(k8s) -> dict:
    env = {}
    for e in container(k8s).get("env", []):
        assert set(e) == {"name", "value"}, f"{e}: plain values only in the example"
        env[e["name"]] = e["value"]
    return env


def test_deployment_environment_is_the_python_proxys_and_the_gateway_takes_it(k8s, help_, start):
    """Every variable of the Python proxy, by its name, and only settings the gateway reads; the
    binary starts with exactly that environment (an unknown GATEWAY_* or a bad value would stop it)."""
    env = k8s_env(k8s)
    assert set(help_.python) <= set(env), f"missing: {set(help_.python) - set(env)}"
    unknown = set(env) - set(help_.flags)
    assert not unknown, f"the Deployment sets variables the gateway does not read: {unknown}"
    g = start(env)
    for name in help_.python:
        assert name in g.settings, name
    for flag in container(k8s).get("args", []) + container(k8s).get("command", [])[1:]:
        if flag.startswith("--"):
            assert flag[2:].split("=")[0] in help_.flags.values(), f"unknown flag {flag}"


def test_deployment_image_is_this_version(k8s, gateway):
    version = cargo_version(REPO / "gateway/Cargo.toml")
    r = subprocess.run([str(gateway), "--version"], capture_output=True, text=True, timeout=30, env={})
    assert r.stdout.strip() == f"{PROGRAM} {version}", r.stdout
    assert container(k8s)["image"] == f"{PROGRAM}:{version}"
    tags = set(re.findall(r"-t (\S+)", GATEWAY_DOCKERFILE.read_text()))
    assert tags == {f"{PROGRAM}:{version}"}, tags


def test_ports_and_service_match_the_settings(k8s, help_):
    env = k8s_env(k8s)
    ports = {p["name"]: p["containerPort"] for p in container(k8s)["ports"]}
    assert ports == {"grpc": int(env.get("PROXY_LISTEN_PORT", help_.defaults["PROXY_LISTEN_PORT"])),
                     "admin": int(env.get("GATEWAY_ADMIN_PORT", help_.defaults["GATEWAY_ADMIN_PORT"]))}
    svc = k8s["Service"]["spec"]
    labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert svc["selector"].items() <= labels.items(), (svc["selector"], labels)
    assert k8s["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    targets = {p["name"]: p["targetPort"] for p in svc["ports"]}
    assert targets.get("grpc") in ("grpc", ports["grpc"]), svc["ports"]
    for p in svc["ports"]:
        assert p["targetPort"] in ports or p["targetPort"] in ports.values(), f"{p} targets no container port"


def test_probes_answer_on_the_admin_port(k8s, help_, start):
    """Readiness on /readyz, liveness on /healthz, both on the admin port; the running binary
    answers both with 200 on its admin port, and a path it does not serve with 404 (so a 200 here
    means something)."""
    c = container(k8s)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    admin = int(k8s_env(k8s).get("GATEWAY_ADMIN_PORT", help_.defaults["GATEWAY_ADMIN_PORT"]))
    probes = {kind: c[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz" and probes["livenessProbe"]["path"] == "/healthz"
    for kind, probe in probes.items():
        assert ports.get(probe["port"], probe["port"]) == admin, f"{kind} probes port {probe['port']}, not the admin port {admin}"
    g = start(k8s_env(k8s))
    for kind, probe in probes.items():
        assert g.get(probe["path"]) == 200, f"{kind}: {probe['path']}"
    assert g.get("/no-such-path") == 404


def test_grace_period_outlasts_the_drain(k8s, help_):
    drain = int(k8s_env(k8s).get("GATEWAY_DRAIN_SECONDS", help_.defaults["GATEWAY_DRAIN_SECONDS"]))
    grace = k8s["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > drain, f"terminationGracePeriodSeconds {grace} must exceed GATEWAY_DRAIN_SECONDS {drain}"


def test_pod_runs_as_the_images_user_read_only(k8s, dockerfile):
    pod = k8s["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    user = next(i.args for i in dockerfile if i.name == "USER")
    uid, gid = (int(x) for x in user.split(":"))
    assert pod["runAsNonRoot"] is True and (pod["runAsUser"], pod["runAsGroup"]) == (uid, gid), (pod, user)
    sc = container(k8s)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, sc


def mib(quantity: str) -> float:
    m = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    assert m, f"memory as Mi or Gi, please: {quantity}"
    return int(m.group(1)) * (1024 if m.group(2) == "Gi" else 1)


def test_memory_is_sized_to_the_rss_goal(k8s):
    res = container(k8s)["resources"]
    request, limit = mib(res["requests"]["memory"]), mib(res["limits"]["memory"])
    assert RSS_GOAL_MIB <= request <= limit, res
