"""chat_auth.keys and chat_auth.config: the signing key, its kid, the JWKS, key settings."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chat_auth.config import AuthSettings
from chat_auth.keys import (
    SigningKey,
    create_key_file,
    from_pem,
    load_signing_key,
    thumbprint,
    to_pem,
)
from chat_kit.settings import SettingsError

# RFC 8037 appendix A.1 (private key d, public key x) and A.3 (its RFC 7638 thumbprint).
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"

ENV_VARS = ("CHAT_AUTH_SIGNING_KEY", "CHAT_AUTH_SIGNING_KEY_FILE", "CHAT_AUTH_DEV_KEY",
            "CHAT_AUTH_PORT", "CHAT_DATABASE_URL", "CHAT_JWT_ISSUER", "CHAT_JWT_AUDIENCE",
            "CHAT_AUTH_ACCESS_TTL", "CHAT_AUTH_REFRESH_TTL", "CHAT_AUTH_REUSE_GRACE")


def _b64decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def test_rfc8037_vector() -> None:
    private = Ed25519PrivateKey.from_private_bytes(_b64decode(RFC8037_D))
    key = SigningKey.of(private)
    jwk = key.public_jwk()
    assert jwk == {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X, "use": "sig",
                   "alg": "EdDSA", "kid": RFC8037_THUMBPRINT}
    assert thumbprint({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}) == RFC8037_THUMBPRINT


def test_thumbprint_ignores_non_defining_members() -> None:
    base = {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}
    assert thumbprint({**base, "use": "sig", "alg": "EdDSA", "kid": "x"}) == thumbprint(base)


def test_generated_keys_have_distinct_kids_and_publish_no_private_part() -> None:
    a, b = SigningKey.of(Ed25519PrivateKey.generate()), SigningKey.of(Ed25519PrivateKey.generate())
    assert a.kid != b.kid
    assert a.jwks() == [a.public_jwk()]
    assert "d" not in a.public_jwk()
    assert repr(a) == f"SigningKey(kid={a.kid!r})"  # never the private key


def test_pem_round_trip_and_rejections() -> None:
    private = Ed25519PrivateKey.generate()
    assert SigningKey.of(from_pem(to_pem(private))).kid == SigningKey.of(private).kid
    with pytest.raises(SettingsError, match="not an unencrypted PEM"):
        from_pem("garbage")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(SettingsError, match="expected an Ed25519 key"):
        from_pem(ec_pem)


def test_create_key_file_is_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing.pem"
    first, created = create_key_file(path)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert SigningKey.of(from_pem(path.read_bytes())).kid == SigningKey.of(first).kid
    # The next start (or a replica starting alongside) loads the key that is there.
    second, created = create_key_file(path)
    assert not created
    assert SigningKey.of(second).kid == SigningKey.of(first).kid
    assert [p.name for p in path.parent.iterdir()] == ["signing.pem"]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_settings_defaults(env: pytest.MonkeyPatch) -> None:
    s = AuthSettings.from_env()
    assert (s.port, s.issuer, s.audience, s.access_ttl, s.refresh_ttl) == (
        8091, "chat-auth", "chat", 900, 30 * 24 * 3600)
    assert s.database_url == "postgresql://postgres@127.0.0.1:5432/chat"
    assert s.dev_key and s.signing_key_pem == "" and s.signing_key_file is None
    assert load_signing_key(s).kid  # ephemeral dev key


def test_settings_key_from_variable_is_hidden(env: pytest.MonkeyPatch) -> None:
    pem = to_pem(Ed25519PrivateKey.generate()).decode()
    env.setenv("CHAT_AUTH_SIGNING_KEY", pem)
    env.setenv("CHAT_AUTH_DEV_KEY", "false")
    s = AuthSettings.from_env()
    assert s.signing_key_pem == pem
    assert "PRIVATE" not in repr(s)
    assert load_signing_key(s).kid == SigningKey.of(from_pem(pem)).kid


def test_settings_key_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(to_pem(Ed25519PrivateKey.generate()))
    env.setenv("CHAT_AUTH_SIGNING_KEY_FILE", str(path))
    env.setenv("CHAT_AUTH_DEV_KEY", "0")
    s = AuthSettings.from_env()
    assert s.signing_key_pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert s.signing_key_file is None


def test_missing_key_file_becomes_a_dev_key(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "dev" / "k.pem"
    env.setenv("CHAT_AUTH_SIGNING_KEY_FILE", str(path))
    s = AuthSettings.from_env()
    assert s.signing_key_file == path
    kid = load_signing_key(s).kid
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Next start: the file exists and is simply read.
    assert load_signing_key(AuthSettings.from_env()).kid == kid


def test_missing_key_fails_without_dev_key(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("CHAT_AUTH_DEV_KEY", "false")
    with pytest.raises(SettingsError, match="CHAT_AUTH_SIGNING_KEY"):
        AuthSettings.from_env()
    env.setenv("CHAT_AUTH_SIGNING_KEY_FILE", str(tmp_path / "absent.pem"))
    with pytest.raises(SettingsError, match="CHAT_AUTH_SIGNING_KEY_FILE.*does not exist"):
        AuthSettings.from_env()


def test_bad_numbers_name_the_variable(env: pytest.MonkeyPatch) -> None:
    env.setenv("CHAT_AUTH_ACCESS_TTL", "0")
    with pytest.raises(SettingsError, match="CHAT_AUTH_ACCESS_TTL"):
        AuthSettings.from_env()
