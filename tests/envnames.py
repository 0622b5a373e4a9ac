"""Which CHAT_* environment variables the code actually reads — shared by the
checks of docker-compose.yml and of the Kubernetes manifests."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sources_of(*members: str) -> list[str]:
    """The text of every module of these workspace members (``shared``, ``gateway``…)."""
    return [p.read_text() for m in members for p in sorted((ROOT / m / "src").rglob("*.py"))]


def is_read(name: str, sources: list[str]) -> bool:
    """Whether the code reads environment variable ``name``.

    A name counts when it appears quoted; ``X_FILE`` also counts when ``X`` is
    read with ``env_secret`` (which tries ``X_FILE``) or is a module constant
    that the same module turns into ``f"{CONSTANT}_FILE"``.
    """
    for text in sources:
        if f'"{name}"' in text or f"'{name}'" in text:
            return True
        if name.endswith("_FILE"):
            base = name.removesuffix("_FILE")
            if re.search(rf'env_secret\(\s*"{base}"', text):
                return True
            constant = re.search(rf'^(\w+) = "{base}"$', text, re.MULTILINE)
            if constant and f'f"{{{constant.group(1)}}}_FILE"' in text:
                return True
    return False
