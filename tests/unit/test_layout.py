"""The tree keeps its architecture: shared/ does no I/O, deployables never
import each other, every member is an installable package with its tests, and
no package has an import cycle among its own modules."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOYABLES = {
    "gateway": "chat_gateway",
    "auth-service": "chat_auth",
    "history-service": "chat_history",
    "presence-service": "chat_presence",
    "notify-service": "chat_notify",
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


# --- no import cycle inside a package ----------------------------------------------

PACKAGES = {
    "chat_contract": ROOT / "shared" / "src" / "chat_contract",
    "chat_kit": ROOT / "services" / "src" / "chat_kit",
    **{package: ROOT / folder / "src" / package for folder, package in DEPLOYABLES.items()},
    "chat_devstack": ROOT / "deploy" / "local" / "src" / "chat_devstack",
}


def _module_name(package: str, package_dir: Path, path: Path) -> str:
    parts = list(path.relative_to(package_dir).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def _import_graph(package: str, package_dir: Path) -> dict[str, set[str]]:
    """Module → the modules of the same package it imports.

    Every import counts, also one under ``if TYPE_CHECKING:`` or inside a
    function: each is a dependency a reader has to follow, and a cycle of
    them means the modules cannot be understood (or tested) one at a time.
    ``from pkg import name`` counts as an import of ``pkg.name`` when that
    is a module, else of ``pkg``.
    """
    paths = {_module_name(package, package_dir, p): p for p in package_dir.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolved against this module's package
                    base = name.split(".")
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in paths
                           else module for alias in node.names]
            for target in targets:
                while target and target not in paths:  # a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules, the first repeated at the end), or None."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(module: str) -> list[str] | None:
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target in on_stack:
                return stack[stack.index(target):] + [target]
            if target not in done:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        on_stack.discard(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            found = visit(module)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}}) == [
        "p.a", "p.b", "p.c", "p.a"]
    assert _cycle({"p.a": {"p.b", "p.c"}, "p.b": {"p.c"}, "p.c": set()}) is None


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycle_inside_a_package(package: str) -> None:
    cycle = _cycle(_import_graph(package, PACKAGES[package]))
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_test_modules_have_distinct_basenames() -> None:
    """pytest imports test files without packages by basename: two files of one
    name in different folders break collection (seen with test_history_capacity)."""
    seen: dict[str, Path] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if (path.parent / "__init__.py").exists():
            continue  # inside a package (tests/e2e): imported as e2e.<name>
        assert path.name not in seen, f"{path} and {seen[path.name]} share a basename"
        seen[path.name] = path
