"""NATS credentials, TLS and inbox prefix from the environment (chat_kit.nats_auth)."""

from __future__ import annotations

import datetime
import importlib.util
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chat_kit.nats_auth import NatsAuthSettings, connect_options
from chat_kit.settings import CommonSettings, SettingsError

VARIABLES = ("CHAT_NATS_USER", "CHAT_NATS_PASSWORD", "CHAT_NATS_PASSWORD_FILE",
             "CHAT_NATS_CREDS", "CHAT_NATS_NKEY_SEED_FILE", "CHAT_NATS_TLS_CA",
             "CHAT_NATS_TLS_CERT", "CHAT_NATS_TLS_KEY", "CHAT_NATS_ROLE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_nothing_set_means_no_credentials_and_a_role_inbox() -> None:
    settings = NatsAuthSettings.from_env()
    assert settings == NatsAuthSettings()
    assert connect_options(settings, "gateway") == {"inbox_prefix": "_INBOX.gateway"}
    # Process names drop "-service": auth-service replies arrive on _INBOX.auth.…
    assert connect_options(settings, "auth-service")["inbox_prefix"] == "_INBOX.auth"


def test_role_variable_wins_over_the_process_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_NATS_ROLE", "admin")
    assert connect_options(NatsAuthSettings.from_env(), "gateway")["inbox_prefix"] == (
        "_INBOX.admin")


def test_user_and_password_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "gateway.password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("CHAT_NATS_USER", "gateway")
    monkeypatch.setenv("CHAT_NATS_PASSWORD_FILE", str(secret))
    settings = CommonSettings.from_env().nats_auth
    assert (settings.user, settings.password) == ("gateway", "s3cret")
    assert "s3cret" not in repr(settings)  # settings may end up in a log line
    options = connect_options(settings, "gateway")
    assert options == {"inbox_prefix": "_INBOX.gateway", "user": "gateway",
                       "password": "s3cret"}


def test_password_from_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_NATS_USER", "history")
    monkeypatch.setenv("CHAT_NATS_PASSWORD", "pw")
    assert NatsAuthSettings.from_env().password == "pw"


def test_creds_and_nkey_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    creds = tmp_path / "gw.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    monkeypatch.setenv("CHAT_NATS_CREDS", str(creds))
    assert connect_options(NatsAuthSettings.from_env(), "gateway")["user_credentials"] == str(
        creds)
    monkeypatch.delenv("CHAT_NATS_CREDS")
    monkeypatch.setenv("CHAT_NATS_NKEY_SEED_FILE", str(creds))
    assert connect_options(NatsAuthSettings.from_env(), "gateway")["nkeys_seed"] == str(creds)


def test_missing_nkeys_package_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seed = tmp_path / "seed.nk"
    seed.write_text("SUA...\n")
    monkeypatch.setenv("CHAT_NATS_NKEY_SEED_FILE", str(seed))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "nkeys" else real(name, *a))
    with pytest.raises(SettingsError, match="CHAT_NATS_NKEY_SEED_FILE: .*'nkeys' package"):
        NatsAuthSettings.from_env()


@pytest.mark.parametrize(("env", "message"), [
    ({"CHAT_NATS_USER": "gateway"}, "CHAT_NATS_USER: set CHAT_NATS_PASSWORD"),
    ({"CHAT_NATS_PASSWORD": "pw"}, "CHAT_NATS_PASSWORD: set CHAT_NATS_USER"),
    ({"CHAT_NATS_USER": "g", "CHAT_NATS_PASSWORD": "p", "CHAT_NATS_CREDS": "{file}"},
     "CHAT_NATS_USER and CHAT_NATS_CREDS: set one kind"),
    ({"CHAT_NATS_CREDS": "/nonexistent/x.creds"}, "CHAT_NATS_CREDS: no such file"),
    ({"CHAT_NATS_PASSWORD_FILE": "/nonexistent/pw"}, "CHAT_NATS_PASSWORD_FILE: cannot read"),
    ({"CHAT_NATS_TLS_CERT": "{file}"}, "CHAT_NATS_TLS_CERT and CHAT_NATS_TLS_KEY go together"),
    ({"CHAT_NATS_TLS_CA": "/nonexistent/ca.pem"}, "CHAT_NATS_TLS_CA: no such file"),
    ({"CHAT_NATS_ROLE": "a.b"}, "CHAT_NATS_ROLE: letters"),
])
def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        env: dict[str, str], message: str) -> None:
    some_file = tmp_path / "f"
    some_file.write_text("x")
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(file=some_file))
    with pytest.raises(SettingsError, match=message):
        NatsAuthSettings.from_env()


def test_tls_context_from_ca_and_client_cert(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    monkeypatch.setenv("CHAT_NATS_TLS_CA", str(cert))
    monkeypatch.setenv("CHAT_NATS_TLS_CERT", str(cert))
    monkeypatch.setenv("CHAT_NATS_TLS_KEY", str(key))
    context = connect_options(NatsAuthSettings.from_env(), "gateway")["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.get_ca_certs()[0]["subject"] == ((("commonName", "test"),),)


def test_unreadable_tls_material_is_refused(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    monkeypatch.setenv("CHAT_NATS_TLS_CA", str(bad))
    with pytest.raises(SettingsError, match="CHAT_NATS_TLS"):
        connect_options(NatsAuthSettings.from_env(), "gateway")
