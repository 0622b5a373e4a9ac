"""The Ed25519 signing key, its ``kid`` and the public JWKS.

The ``kid`` is the key's RFC 7638 JWK thumbprint, so it is derived from the
key itself: every replica holding the same key publishes the same ``kid``
without any coordination, and a new key always gets a new ``kid``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chat_contract.claims import SIGNING_ALGORITHM
from chat_kit.logs import event
from chat_kit.settings import SettingsError

from .config import KEY_FILE_VAR, KEY_VAR, AuthSettings

log = logging.getLogger("chat_auth.keys")

# RFC 7638 §3.2: the members that define a key, per key type.
_THUMBPRINT_MEMBERS = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y"),
                       "RSA": ("e", "kty", "n")}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of a public JWK."""
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    kid: str

    @classmethod
    def of(cls, private: Ed25519PrivateKey) -> SigningKey:
        return cls(private, thumbprint(_okp_members(private)))

    def public_jwk(self) -> dict[str, Any]:
        return {**_okp_members(self.private), "use": "sig", "alg": SIGNING_ALGORITHM,
                "kid": self.kid}

    def jwks(self) -> list[dict[str, Any]]:
        """The keys the JWKS endpoint publishes (one now; a rotation would add the old one)."""
        return [self.public_jwk()]

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"


def _okp_members(private: Ed25519PrivateKey) -> dict[str, Any]:
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}


def to_pem(private: Ed25519PrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def from_pem(pem: str | bytes, source: str = KEY_VAR) -> Ed25519PrivateKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"{source}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SettingsError(f"{source}: expected an Ed25519 key, got {type(key).__name__}")
    return key


def create_key_file(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """Generate a key into ``path`` (mode 0600), or load the one already there.

    Returns the key and whether this call created it.
    """
    if path.exists():
        return from_pem(path.read_bytes(), KEY_FILE_VAR), False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    # Write a private temp file, then link it into place: the link is atomic and
    # fails if the name exists, so two replicas starting together never see a
    # half-written file nor overwrite each other's key.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(to_pem(private))
        try:
            os.link(tmp, path)
        except FileExistsError:  # another replica won the race
            return from_pem(path.read_bytes(), KEY_FILE_VAR), False
    finally:
        tmp.unlink(missing_ok=True)
    return private, True


def load_signing_key(settings: AuthSettings) -> SigningKey:
    """The configured key; with ``CHAT_AUTH_DEV_KEY`` on, a generated one if none is set."""
    if settings.signing_key_pem:
        return SigningKey.of(from_pem(settings.signing_key_pem))
    if not settings.dev_key:  # AuthSettings.from_env already refuses this
        raise SettingsError(f"{KEY_VAR} is not set")
    if settings.signing_key_file is not None:
        private, created = create_key_file(settings.signing_key_file)
        key = SigningKey.of(private)
        if created:
            event(log, "development signing key created", logging.WARNING,
                  path=str(settings.signing_key_file), kid=key.kid)
        return key
    key = SigningKey.of(Ed25519PrivateKey.generate())
    event(log, "ephemeral development signing key: tokens die with this process, "
          "run one replica only", logging.WARNING, kid=key.kid)
    return key
