"""deploy/k8s/base, deploy/prometheus and deploy/grafana agree with the code and each other.

Plain parsing of the kustomize base, no cluster: probes point at /readyz and
/healthz on the port the image listens on, every variable is one the code
reads, secrets come from Secrets, the Ingress serves only the gateway's
public paths, and every metric an alert or a panel uses is one the code (or
the NATS exporter) exports. The rendered overlays, their schema validation
and the migration Job are tests/unit/test_deploy_kustomize.py; the alert
rules' unit tests are tests/unit/test_deploy_alerts.py.

These test deployment files, not a Python module: hence a name without a
package prefix (tests/unit otherwise mirrors src as test_<package>_<module>.py).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from envnames import is_read, sources_of

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s" / "base"
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
COMMON_MEMBERS = ("shared", "services")
DEPLOYABLES = ("gateway", "auth-service", "history-service", "presence-service",
               "notify-service")
# Variables outside CHAT_* that a chat container may get, and who reads them.
FOREIGN_ENV = {"FORWARDED_ALLOW_IPS": "uvicorn: trusted X-Forwarded-For sources"}
NATS_REPLICAS = 3
# The gateway's paths that only Prometheus and the probes may see.
INTERNAL_PATHS = ("/metrics", "/healthz", "/readyz")
# Names that the NATS exporter (prometheus-nats-exporter) exports, beside up.
EXPORTER_PREFIXES = ("gnatsd_", "jetstream_")


# --- helpers -----------------------------------------------------------------






def dockerfile_facts(member: str) -> dict[str, Any]:
    """The port (EXPOSE), its variable, the user and the CMD of a member's image."""
    text = re.sub(r"\\\n", " ", (ROOT / member / "Dockerfile").read_text())
    runtime = text.split(" AS runtime", 1)[1]
    expose = re.findall(r"^EXPOSE (\d+)$", runtime, re.MULTILINE)
    env_words = [w for line in re.findall(r"^ENV (.*)$", runtime, re.MULTILINE)
                 for w in shlex.split(line)]
    env = dict(w.split("=", 1) for w in env_words)
    port_var = next(k for k in env if re.fullmatch(r"CHAT_[A-Z]+_PORT", k))
    cmd = json.loads(re.findall(r"^CMD (\[.*\])$", runtime, re.MULTILINE)[-1])
    user = re.findall(r"^USER (\S+)$", runtime, re.MULTILINE)[-1]
    return {"port": int(expose[0]), "port_var": port_var, "cmd": cmd[0], "user": user}


def image_members() -> dict[str, str]:
    """Image name (= console script, e.g. chat-gateway) → member directory."""
    result = {}
    for member in DEPLOYABLES:
        project = tomllib.loads((ROOT / member / "pyproject.toml").read_text())["project"]
        script = dockerfile_facts(member)["cmd"]
        assert script in project.get("scripts", {}), member
        result[script] = member
    return result


def load_manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def probe_path(probe: dict[str, Any]) -> str:
    return str(probe["httpGet"]["path"])


def metric_names() -> set[str]:
    """Every series name the code exposes (prometheus_client suffixes included)."""
    pattern = re.compile(r'\b(Counter|Gauge|Histogram|Summary)\(\s*"(chat_[a-z0-9_]+)"')
    names: set[str] = set()
    for member in (*COMMON_MEMBERS, *DEPLOYABLES):
        for path in (ROOT / member / "src").rglob("*.py"):
            for kind, name in pattern.findall(path.read_text()):
                if kind == "Counter":
                    base = name.removesuffix("_total")
                    names |= {f"{base}_total", f"{base}_created"}
                elif kind in ("Histogram", "Summary"):
                    names |= {name, *(f"{name}_{s}" for s in ("bucket", "sum", "count", "created"))}
                else:
                    names.add(name)
    return names


def used_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\bchat_[a-z0-9_]+\b", expr))


def exporter_metrics(expr: str) -> set[str]:
    prefixes = "|".join(EXPORTER_PREFIXES)
    return set(re.findall(rf"\b(?:{prefixes})[a-z0-9_]+\b", expr))


# --- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[tuple[str, dict[str, Any]]]:
    return load_manifests()


@pytest.fixture(scope="module")
def by_kind(manifests: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for _, doc in manifests:
        name = doc["metadata"]["name"] if "metadata" in doc else doc["kind"]
        kinds = result.setdefault(doc["kind"], {})
        assert name not in kinds, f"two {doc['kind']} named {name}"
        kinds[name] = doc
    return result


@pytest.fixture(scope="module")
def deployments(by_kind: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return by_kind["Deployment"]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return list(workload["spec"]["template"]["spec"]["containers"])


def chat_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    """Its containers and init containers that run a chat image."""
    spec = workload["spec"]["template"]["spec"]
    members = image_members()
    return [c for c in [*spec.get("initContainers", []), *spec["containers"]]
            if c["image"] in members]


def env_map(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# --- kubernetes --------------------------------------------------------------


def test_manifests_parse_and_kustomization_lists_them(
    by_kind: dict[str, dict[str, dict[str, Any]]],
) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources = set(kustomization["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert resources == files
    assert "namespace" not in kustomization, "namespace-free: the overlays set it"
    assert "images" not in kustomization, "bare image names: each overlay sets its own"
    for kind in ("ConfigMap", "Deployment", "Service", "StatefulSet", "Ingress", "Job",
                 "PodDisruptionBudget", "NetworkPolicy", "PodMonitor", "PrometheusRule"):
        assert kind in by_kind, kind
    assert "Secret" not in by_kind, "Secrets come from the overlays' secretGenerator"
    for overlay in sorted(OVERLAYS.iterdir()):
        images = {i["name"] for i in
                  yaml.safe_load((overlay / "kustomization.yaml").read_text())["images"]}
        assert images == set(image_members()), overlay.name


def test_a_deployment_per_deployable(deployments: dict[str, dict[str, Any]]) -> None:
    images = {c["image"] for d in deployments.values() for c in containers(d)}
    assert images == set(image_members())
    for name, deployment in deployments.items():
        assert deployment["spec"]["replicas"] >= 2, f"{name}: replicas share the load"


def test_every_deployment_probes_readyz_and_healthz(
    deployments: dict[str, dict[str, Any]],
) -> None:
    members = image_members()
    for name, deployment in deployments.items():
        for container in containers(deployment):
            facts = dockerfile_facts(members[container["image"]])
            assert probe_path(container["readinessProbe"]) == "/readyz", name
            assert probe_path(container["livenessProbe"]) == "/healthz", name
            if "startupProbe" in container:
                assert probe_path(container["startupProbe"]) == "/healthz", name
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                if kind in container:
                    port = container[kind]["httpGet"]["port"]
                    assert ports.get(port, port) == facts["port"], f"{name} {kind}"
            env = env_map(container)
            assert env[facts["port_var"]]["value"] == str(facts["port"]), name
            assert set(ports.values()) == {facts["port"]}, f"{name}: EXPOSE {facts['port']}"


def test_env_names_are_read_by_the_code(
    deployments: dict[str, dict[str, Any]], by_kind: dict[str, dict[str, dict[str, Any]]]
) -> None:
    members = image_members()
    common = sources_of(*COMMON_MEMBERS)
    for name, config in by_kind["ConfigMap"].items():
        if name == "chat-config":
            for var in config["data"]:
                # envFrom gives these to every process: chat_kit must read them.
                assert is_read(var, common), f"chat-config: {var} is not read by chat_kit"
                assert isinstance(config["data"][var], str), var
    for name, deployment in [*deployments.items(), *by_kind["Job"].items()]:
        for container in chat_containers(deployment):
            sources = sources_of(*COMMON_MEMBERS, members[container["image"]])
            for var in env_map(container):
                if var.startswith("CHAT_"):
                    assert is_read(var, sources), f"{name}: nothing in its image reads {var}"
                else:
                    assert var in FOREIGN_ENV, f"{name}: {var} is read by nobody we know of"
            for source in container.get("envFrom", []):
                ref = source["configMapRef"]["name"]
                assert ref in by_kind["ConfigMap"], f"{name}: no ConfigMap {ref}"


def test_pods_run_as_the_image_user(
    deployments: dict[str, dict[str, Any]], by_kind: dict[str, dict[str, dict[str, Any]]]
) -> None:
    members = image_members()
    for name, deployment in [*deployments.items(), *by_kind["Job"].items()]:
        pod = deployment["spec"]["template"]["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        for container in chat_containers(deployment):
            user = dockerfile_facts(members[container["image"]])["user"].split(":")[0]
            assert str(pod["runAsUser"]) == user, name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name


def test_gateway_drains_before_it_dies(
    deployments: dict[str, dict[str, Any]], by_kind: dict[str, dict[str, dict[str, Any]]]
) -> None:
    gateway = deployments["chat-gateway"]
    spec = gateway["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert gateway["spec"]["replicas"] == 2
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    # preStop sleep + component stop (10 s) + HTTP shutdown (5 s) + NATS drain (5 s)
    assert spec["terminationGracePeriodSeconds"] >= int(command[1]) + 20
    assert gateway["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    pdbs = [p for p in by_kind["PodDisruptionBudget"].values()
            if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
    assert pdbs, "no PodDisruptionBudget covers the gateways"


def test_services_select_pods_and_name_their_ports(
    by_kind: dict[str, dict[str, dict[str, Any]]],
) -> None:
    workloads = [*by_kind["Deployment"].values(), *by_kind["StatefulSet"].values()]
    for name, service in by_kind["Service"].items():
        selector = service["spec"]["selector"]
        matches = [w for w in workloads
                   if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, f"Service {name} selects {len(matches)} workloads"
        port_names = {p["name"] for c in containers(matches[0]) for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"Service {name}: {port['targetPort']}"
    for workload in workloads:
        assert workload["spec"]["selector"]["matchLabels"].items() <= (
            workload["spec"]["template"]["metadata"]["labels"].items())


def test_secrets_are_mounted_not_written(deployments: dict[str, dict[str, Any]]) -> None:
    generated = overlay_secret_keys()
    for name, deployment in deployments.items():
        for container in containers(deployment):
            env = env_map(container)
            if "CHAT_DATABASE_URL" in env:
                ref = env["CHAT_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
                assert ref["key"] in generated[ref["name"]], name
    auth = deployments["chat-auth"]
    (container,) = containers(auth)
    env = env_map(container)
    assert env["CHAT_AUTH_DEV_KEY"]["value"] == "false", "production never generates a key"
    key_file = Path(env["CHAT_AUTH_SIGNING_KEY_FILE"]["value"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    mount = mounts[str(key_file.parent)]
    assert mount["readOnly"] is True
    volumes = {v["name"]: v for v in auth["spec"]["template"]["spec"]["volumes"]}
    secret = volumes[mount["name"]]["secret"]
    paths = {i["path"]: i["key"] for i in secret["items"]}
    assert paths[key_file.name] in generated[secret["secretName"]]
    # Only auth holds the signing key, only notify the webhook's HMAC key; the
    # other Secret any pod mounts is its own NATS password
    # (test_each_deployment_logs_in_to_nats_as_its_role).
    own = {"chat-auth": secret["secretName"], "chat-notify": "chat-notify-webhook"}
    for name, deployment in deployments.items():
        for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in volume:
                allowed = {"chat-nats-credentials"} | ({own[name]} if name in own else set())
                assert volume["secret"]["secretName"] in allowed, f"{name} mounts a secret"


def overlay_secret_keys() -> dict[str, set[str]]:
    """Secret name -> its keys, as every overlay's secretGenerator makes them."""
    result: dict[str, set[str]] | None = None
    for overlay in sorted(OVERLAYS.iterdir()):
        kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        keys = {g["name"]: {f.split("=", 1)[0] for f in g["files"]}
                for g in kustomization["secretGenerator"]}
        for generator in kustomization["secretGenerator"]:
            for f in generator["files"]:
                # Files the operator provides (make-secrets.sh), never committed.
                assert f.split("=", 1)[1].startswith("secrets/"), (overlay.name, f)
        shared = {k: v for k, v in keys.items() if k != "chat-postgres"}
        assert result is None or shared == result, f"{overlay.name}: other Secrets"
        result = shared
    assert result is not None
    return result


def test_nats_is_a_jetstream_cluster_of_three(
    by_kind: dict[str, dict[str, dict[str, Any]]],
) -> None:
    config = by_kind["ConfigMap"]["chat-config"]["data"]
    assert config["CHAT_STREAM_REPLICAS"] == str(NATS_REPLICAS)
    url = re.fullmatch(r"nats://([a-z0-9-]+):(\d+)", config["CHAT_NATS_URL"])
    assert url, config["CHAT_NATS_URL"]
    service = by_kind["Service"][url.group(1)]
    assert int(url.group(2)) in {p["port"] for p in service["spec"]["ports"]}

    nats = by_kind["StatefulSet"]["nats"]
    assert nats["spec"]["replicas"] == NATS_REPLICAS
    headless = by_kind["Service"][nats["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    conf = by_kind["ConfigMap"]["nats-config"]["data"]["nats.conf"]
    assert "jetstream" in conf and "store_dir: /data" in conf
    for n in range(NATS_REPLICAS):
        assert f"nats://nats-{n}.{headless['metadata']['name']}:6222" in conf
    container = next(c for c in containers(nats) if c["name"] == "nats")
    assert "/data" in {m["mountPath"] for m in container["volumeMounts"]}
    assert {t["metadata"]["name"] for t in nats["spec"]["volumeClaimTemplates"]} == {"data"}


def gateway_routes() -> set[str]:
    """Every path the gateway serves to clients (its routes in the code)."""
    paths: set[str] = set()
    for path in (ROOT / "gateway" / "src" / "chat_gateway").glob("*.py"):
        text = path.read_text()
        paths |= set(re.findall(r'\broute\(ctx, "(/[^"]*)"', text))
        paths |= set(re.findall(r'\b(?:WebSocketRoute|Route|Mount)\("(/[^"]*)"', text))
    return paths


def ingress_reaches(paths: list[tuple[str, str]], url_path: str) -> bool:
    """Whether an Ingress path (Kubernetes semantics of Exact and Prefix) matches."""
    for path, kind in paths:
        if kind == "Exact" and url_path == path:
            return True
        if kind == "Prefix":
            prefix = path.rstrip("/")
            if url_path == prefix or url_path.startswith(prefix + "/") or prefix == "":
                return True
    return False


def test_ingress_routes_the_public_paths_only(
    by_kind: dict[str, dict[str, dict[str, Any]]],
) -> None:
    gateway_service = by_kind["Service"]["chat-gateway"]
    port_names = {p["name"] for p in gateway_service["spec"]["ports"]}
    routes: dict[str, dict[str, Any]] = {}
    paths: list[tuple[str, str]] = []
    for ingress in by_kind["Ingress"].values():
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == "chat-gateway"
                assert backend["port"]["name"] in port_names
                assert path["pathType"] in ("Exact", "Prefix"), path
                routes[path["path"]] = ingress
                paths.append((path["path"], path["pathType"]))
    assert {"/ws", "/"} <= routes.keys()
    ws = routes["/ws"]["metadata"]["annotations"]
    assert int(ws["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(ws["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    # Uploads up to the gateway's attachment limit get through the Ingress.
    from chat_gateway.config import GatewaySettings

    limit = GatewaySettings.from_env().attachment_max_bytes
    body = routes["/v1"]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", body).groups()  # type: ignore[union-attr]
    assert int(number) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit] > limit
    # /metrics is not public (issue 15): nor are the probes.
    for internal in INTERNAL_PATHS:
        assert not ingress_reaches(paths, internal), f"{internal} is public"
        assert not ingress_reaches(paths, internal + "/x"), f"{internal}/... is public"
    # Every route of the gateway is reachable ({room} and the like as a sample value).
    public = gateway_routes()
    assert "/v1/rooms" in public and "/ws" in public, public
    for route in public:
        sample = re.sub(r"\{[^}]+\}", "x", route)
        assert ingress_reaches(paths, sample), f"the Ingress does not route {route}"


# --- prometheus and grafana ----------------------------------------------------


COMPONENT_OF_MEMBER = {"gateway": "gateway", "auth-service": "auth",
                       "history-service": "history", "presence-service": "presence",
                       "notify-service": "notify"}


def compose_scrape_targets() -> dict[str, str]:
    """host:port -> component of every chat process (and the NATS exporter) in compose."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    targets = {}
    for name, svc in services.items():
        if "build" in svc:
            member = Path(svc["build"]["dockerfile"]).parent.name
            port_var = dockerfile_facts(member)["port_var"]
            targets[f"{name}:{svc['environment'][port_var]}"] = COMPONENT_OF_MEMBER[member]
    exporter = services["nats-exporter"]
    port = re.search(r"-port=(\d+)", " ".join(exporter["command"]))
    assert port and "http://nats:8222" in exporter["command"]
    targets[f"nats-exporter:{port.group(1)}"] = "nats"
    return targets


def test_prometheus_scrapes_every_chat_process() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = {}
    for job in config["scrape_configs"]:
        if job["job_name"] in ("prometheus", "alertmanager"):
            continue
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"]:
            # The label the alerts select on (never the job name).
            for target in static["targets"]:
                targets[target] = static.get("labels", {}).get("component")
    assert targets == compose_scrape_targets()
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS / rule_file).exists(), rule_file


def test_alerts_use_exported_metrics() -> None:
    rules = [r for g in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
             for r in g["rules"]]
    exported = metric_names()
    exprs = " ".join(r["expr"] for r in rules)
    for rule in rules:
        assert rule["alert"] and rule["for"] and rule["labels"]["severity"], rule
        assert rule["annotations"]["summary"], rule["alert"]
        unknown = used_metrics(rule["expr"]) - exported
        assert not unknown, f"{rule['alert']}: {unknown} is exported by nothing"
    # The alerts this project promised (docs/protocol.md §7 names).
    assert re.search(r"chat_nats_connected\s*==\s*0", exprs)
    assert re.search(r"histogram_quantile\(0\.99,[^>]*chat_delivery_latency_seconds_bucket"
                     r"[^>]*>\s*0\.25", exprs)
    assert "rate(chat_ws_dropped_total" in exprs
    assert 'chat_service_requests_total{outcome!="ok"}' in exprs


def test_dashboard_uses_exported_metrics() -> None:
    dashboard = json.loads((GRAFANA / "dashboard.json").read_text())
    exported = metric_names()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    seen: set[str] = set()
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = used_metrics(target["expr"])
            foreign = exporter_metrics(target["expr"])
            assert used or foreign or "up{" in target["expr"], panel["title"]
            assert not used - exported, f"{panel['title']}: {used - exported}"
            seen |= used
    for name in ("chat_ws_connections", "chat_ws_messages_in_total",
                 "chat_ws_messages_out_total", "chat_ws_dropped_total",
                 "chat_delivery_latency_seconds_bucket", "chat_nats_connected",
                 "chat_service_requests_total", "chat_presence_leader",
                 "chat_history_consumer_lag_seconds", "chat_stream_bytes"):
        assert name in seen, f"no panel shows {name}"


def test_dashboard_has_a_row_per_service_the_stream_and_the_consumers() -> None:
    dashboard = json.loads((GRAFANA / "dashboard.json").read_text())
    rows: dict[str, list[dict[str, Any]]] = {}
    current: list[dict[str, Any]] | None = None
    for panel in sorted(dashboard["panels"],
                        key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"])):
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], [])
        else:
            assert current is not None, f"{panel['title']} is above every row"
            current.append(panel)
    expected = {"Gateways", "auth-service", "history-service", "presence-service",
                "notify-service", "CHAT stream", "Consumers", "NATS"}
    assert expected <= rows.keys(), expected - rows.keys()
    for title, panels in rows.items():
        assert panels, f"row {title} is empty"
    for service in ("auth", "history", "presence", "notify"):
        exprs = " ".join(t["expr"] for p in rows[f"{service}-service"] for t in p["targets"])
        assert f'service="{service}"' in exprs, f"{service}-service's requests"
    consumers = " ".join(t["expr"] for p in rows["Consumers"] for t in p["targets"])
    assert "jetstream_consumer_num_pending" in consumers  # notify-push, history-push, ...
    # Panels do not overlap.
    cells = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps"
                cells.add((x, y))


def test_grafana_provisioning_matches_compose() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"] if v.startswith("."))
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "chat.yml").read_text())["providers"]
    dashboards_dir = providers[0]["options"]["path"]
    assert mounts["./deploy/grafana/dashboard.json"].startswith(dashboards_dir + "/")
    for host_path in mounts:
        assert (ROOT / host_path).exists(), host_path


# --- NATS credentials ----------------------------------------------------------

NATS_ROLE_OF = {"chat-gateway": "gateway", "chat-auth": "auth", "chat-history": "history",
                "chat-presence": "presence", "chat-notify": "notify"}
NATS_SECRET = "chat-nats-credentials"


def test_each_deployment_logs_in_to_nats_as_its_role(
    deployments: dict[str, dict[str, Any]], by_kind: dict[str, dict[str, dict[str, Any]]]
) -> None:
    from chat_devstack.nats_auth import ROLES

    assert overlay_secret_keys()[NATS_SECRET] == set(ROLES)
    assert set(NATS_ROLE_OF) == set(deployments)
    for name, role in NATS_ROLE_OF.items():
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = env_map(container)
        assert env["CHAT_NATS_USER"]["value"] == env["CHAT_NATS_ROLE"]["value"] == role, name
        assert "CHAT_NATS_PASSWORD" not in env, f"{name}: the password is a file, not env"
        password = Path(env["CHAT_NATS_PASSWORD_FILE"]["value"])
        mount = {m["mountPath"]: m for m in container["volumeMounts"]}[str(password.parent)]
        assert mount["readOnly"] is True, name
        volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]["secret"]
        # Only this role's key: a gateway pod never holds auth's password.
        assert volume["secretName"] == NATS_SECRET, name
        assert volume["items"] == [{"key": role, "path": password.name}], name


def test_nats_requires_the_role_users(by_kind: dict[str, dict[str, dict[str, Any]]],
                                      tmp_path: Path) -> None:
    from chat_devstack.binaries import nats_server_bin
    from chat_devstack.nats_auth import ROLES, deploy_authorization, env_reference

    data = by_kind["ConfigMap"]["nats-config"]["data"]
    assert 'include "authorization.conf"' in data["nats.conf"]
    assert "no_auth_user" not in data["nats.conf"] + data["authorization.conf"]
    # One table: the Kubernetes copy, the compose copy and the role table agree.
    assert data["authorization.conf"] == deploy_authorization()
    assert (ROOT / "deploy" / "nats" / "authorization.conf").read_text() == (
        deploy_authorization())
    container = next(c for c in containers(by_kind["StatefulSet"]["nats"])
                     if c["name"] == "nats")
    env = env_map(container)
    for role in ROLES:
        ref = env[env_reference(role)[1:]]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": NATS_SECRET, "key": role}, role
    # The real server accepts the config (each $NATS_<ROLE>_PASSWORD resolved).
    for key, text in data.items():
        (tmp_path / key).write_text(text)
    server_env = {"SERVER_NAME": "nats-0", **{env_reference(r)[1:]: f"pw-{r}" for r in ROLES}}
    result = subprocess.run([str(nats_server_bin()), "-t", "-c", str(tmp_path / "nats.conf")],
                            env=server_env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
