"""The tree keeps its architecture: shared/ does no I/O, deployables never
import each other, and every member is an installable package with its tests."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOYABLES = {
    "gateway": "chat_gateway",
    "auth-service": "chat_auth",
    "history-service": "chat_history",
    "presence-service": "chat_presence",
}
IO_MODULES = {"asyncio", "socket", "nats", "asyncpg", "starlette", "uvicorn", "httpx", "os",
              "subprocess", "prometheus_client", "logging"}


def _imports(package_dir: Path) -> set[str]:
    names: set[str] = set()
    for path in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_deployables_never_import_each_other() -> None:
    for folder, package in DEPLOYABLES.items():
        imported = _imports(ROOT / folder / "src" / package)
        others = set(DEPLOYABLES.values()) - {package}
        assert not imported & others, f"{package} imports {imported & others}"
        assert "chat_devstack" not in imported


def test_contract_is_pure_data() -> None:
    imported = _imports(ROOT / "shared" / "src" / "chat_contract")
    assert not imported & IO_MODULES, imported & IO_MODULES
    assert "chat_kit" not in imported


def test_kit_does_not_import_deployables() -> None:
    imported = _imports(ROOT / "services" / "src" / "chat_kit")
    assert not imported & set(DEPLOYABLES.values())


def test_each_deployable_declares_its_console_script() -> None:
    for folder, package in DEPLOYABLES.items():
        project = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]
        scripts = project["scripts"]
        assert any(target.startswith(f"{package}.") for target in scripts.values()), folder
        assert (ROOT / folder / "Dockerfile").exists(), f"{folder} has no Dockerfile"
