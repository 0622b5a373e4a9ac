"""How a process proves who it is to NATS: credentials, TLS, and its inbox prefix.

NATS gives each role (gateway, auth, history, presence, admin) a user with
publish/subscribe permissions (deploy/README.md "NATS credentials and
permissions"). A process picks its credentials from the environment, one
kind at a time:

- ``CHAT_NATS_USER`` with ``CHAT_NATS_PASSWORD`` (or ``CHAT_NATS_PASSWORD_FILE``);
- ``CHAT_NATS_CREDS``: a ``.creds`` file (JWT plus nkey seed, operator mode);
- ``CHAT_NATS_NKEY_SEED_FILE``: an nkey seed file (``authorization { users:
  [{nkey: U...}] }``).

The last two need the ``nkeys`` package (a dependency of chat-kit).
``CHAT_NATS_TLS_CA`` verifies the server (``tls://`` URLs, or a server that
requires TLS); ``CHAT_NATS_TLS_CERT`` with ``CHAT_NATS_TLS_KEY`` is the
client certificate for a server that verifies clients.

Replies to our requests arrive on ``_INBOX.<role>.…`` instead of nats-py's
shared ``_INBOX.…``, so a role's subscribe permission can be
``_INBOX.<role>.>``: a gateway cannot read the replies of auth-service's
callers, nor presence-service the login replies (tokens) meant for gateways.
The role is ``CHAT_NATS_ROLE``, else the process name without ``-service``.
"""

from __future__ import annotations

import importlib.util
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .env import SettingsError, env_secret, env_str

INBOX_ROOT = "_INBOX"
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class NatsAuthSettings:
    """The ``CHAT_NATS_*`` credential and TLS variables (README "Configuration")."""

    user: str = ""
    password: str = field(default="", repr=False)  # never in a log line
    creds_file: str = ""
    nkey_seed_file: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    role: str = ""

    @classmethod
    def from_env(cls) -> NatsAuthSettings:
        settings = cls(
            user=env_str("CHAT_NATS_USER", ""),
            password=env_secret("CHAT_NATS_PASSWORD"),
            creds_file=env_str("CHAT_NATS_CREDS", ""),
            nkey_seed_file=env_str("CHAT_NATS_NKEY_SEED_FILE", ""),
            tls_ca=env_str("CHAT_NATS_TLS_CA", ""),
            tls_cert=env_str("CHAT_NATS_TLS_CERT", ""),
            tls_key=env_str("CHAT_NATS_TLS_KEY", ""),
            role=env_str("CHAT_NATS_ROLE", ""),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse contradictory or unreadable settings at start, naming the variable."""
        kinds = [name for name, given in (
            ("CHAT_NATS_USER", bool(self.user)),
            ("CHAT_NATS_CREDS", bool(self.creds_file)),
            ("CHAT_NATS_NKEY_SEED_FILE", bool(self.nkey_seed_file)),
        ) if given]
        if len(kinds) > 1:
            raise SettingsError(f"{' and '.join(kinds)}: set one kind of NATS credentials")
        if self.password and not self.user:
            raise SettingsError("CHAT_NATS_PASSWORD: set CHAT_NATS_USER too")
        if self.user and not self.password:
            raise SettingsError("CHAT_NATS_USER: set CHAT_NATS_PASSWORD or "
                                "CHAT_NATS_PASSWORD_FILE too")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("CHAT_NATS_TLS_CERT and CHAT_NATS_TLS_KEY go together")
        if self.role and not _TOKEN.fullmatch(self.role):
            raise SettingsError(f"CHAT_NATS_ROLE: letters, digits, '_' or '-', "
                                f"got {self.role!r}")
        for name, path in (("CHAT_NATS_CREDS", self.creds_file),
                           ("CHAT_NATS_NKEY_SEED_FILE", self.nkey_seed_file),
                           ("CHAT_NATS_TLS_CA", self.tls_ca),
                           ("CHAT_NATS_TLS_CERT", self.tls_cert),
                           ("CHAT_NATS_TLS_KEY", self.tls_key)):
            if path and not Path(path).is_file():
                raise SettingsError(f"{name}: no such file {path}")
        if self.creds_file or self.nkey_seed_file:
            _require_nkeys("CHAT_NATS_CREDS" if self.creds_file else "CHAT_NATS_NKEY_SEED_FILE")

    def role_for(self, process: str) -> str:
        """``CHAT_NATS_ROLE``, else the process name (``auth-service`` → ``auth``)."""
        if self.role:
            return self.role
        name = process.removesuffix("-service")
        return name if _TOKEN.fullmatch(name) else re.sub(r"[^A-Za-z0-9_-]", "_", name)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context when a CA or client certificate is given, else None
        (nats-py then uses the system's CAs for ``tls://`` URLs)."""
        if not (self.tls_ca or self.tls_cert):
            return None
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                                 cafile=self.tls_ca or None)
            if self.tls_cert:
                context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"CHAT_NATS_TLS_*: cannot load {exc}") from None
        return context


def inbox_prefix(role: str) -> str:
    return f"{INBOX_ROOT}.{role}"


def connect_options(settings: NatsAuthSettings, process: str) -> dict[str, Any]:
    """Keyword arguments for ``nats.aio.client.Client.connect``."""
    options: dict[str, Any] = {"inbox_prefix": inbox_prefix(settings.role_for(process))}
    if settings.user:
        options.update(user=settings.user, password=settings.password)
    if settings.creds_file:
        options["user_credentials"] = settings.creds_file
    if settings.nkey_seed_file:
        options["nkeys_seed"] = settings.nkey_seed_file
    context = settings.ssl_context()
    if context is not None:
        options["tls"] = context
    return options


def _require_nkeys(variable: str) -> None:
    # nats-py imports it only when it signs the server's nonce: check at start.
    if importlib.util.find_spec("nkeys") is None:
        raise SettingsError(f"{variable}: nkey and .creds authentication need the 'nkeys' "
                            "package (pip install nkeys)")
