"""The auth operations (register, login, refresh, logout, users, jwks) as typed
handlers; no NATS here (:mod:`.service` binds each to its chat_contract.rpc).

Refresh-token reuse: a token is spent when rotated. When a spent token comes
back *after* the grace period (``CHAT_AUTH_REUSE_GRACE``, default 5 s), either
the client or a thief holds a copy, and we cannot tell which: we end every
session of the user, so the thief's successor token (and whatever else the
thief got hold of) dies too and the user logs in again (OAuth 2.0 Security
BCP, refresh token rotation).
Within the grace period it is most likely two tabs refreshing at once: the
loser is refused but nothing is revoked, so the winner's session survives.

Revocation (README "Security"): a login is a session, its refresh-token
family, whose id every access token of it carries (``sid``). Logout ends that
session; a replay, a password change and disabling the account end every
session of the user. Each writes the :mod:`.denylist` after the database
commit, so the gateways refuse the session's access tokens and close its
sockets within a second.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets

from chat_contract import limits
from chat_contract.bus import (
    Credentials,
    DisableReply,
    DisableRequest,
    Empty,
    JwksReply,
    PasswordChange,
    RefreshRequest,
    RegisterReply,
    TokenPair,
    UsersReply,
    UsersRequest,
)
from chat_contract.errors import ChatError, ErrorCode
from chat_contract.events import User
from chat_kit.audit import AuditLimiter
from chat_kit.logs import audit, event
from chat_kit.passwords import Passwords
from chat_kit.throttle import LoginThrottle, RegistrationThrottle

from .denylist import MARGIN, Denylist
from .keys import SigningKey
from .store import AuthStore, Ended, NameTakenError
from .tokens import TokenIssuer, new_family, new_refresh_token, refresh_token_hash

log = logging.getLogger("chat_auth.handlers")

# Contract bounds (docs/protocol.md §2, §8.1), under the names this module used.
USERNAME = re.compile(limits.USERNAME_PATTERN)
PASSWORD_MIN, PASSWORD_MAX = limits.PASSWORD_MIN, limits.PASSWORD_MAX
# Ids and names per user lookup (an invite list, a DM, a block).
MAX_LOOKUP = limits.USERS_LOOKUP_MAX
_NAME_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,32}")
# One message for every login failure: it must not tell "no such user" apart.
BAD_CREDENTIALS = "invalid username or password"
BAD_REFRESH = "invalid or expired refresh token"
DISABLED = "account disabled"
# Spent tokens are kept this long past expiry so late reuse is still recognised.
KEEP_EXPIRED = 7 * 24 * 3600.0


def new_user_id() -> str:
    # 80 random bits, lowercase hex: safe in URLs, subjects and KV keys.
    return "u_" + secrets.token_hex(10)


def _for_log(value: str) -> str:
    return value[:64]


class AuthHandlers:
    def __init__(self, store: AuthStore, passwords: Passwords, key: SigningKey,
                 issuer: TokenIssuer, refresh_ttl: int, reuse_grace: float,
                 throttle: LoginThrottle | None = None,
                 registrations: RegistrationThrottle | None = None, *,
                 denylist: Denylist | None = None) -> None:
        self.store = store
        self.passwords = passwords
        self.key = key
        self.issuer = issuer
        self.refresh_ttl = refresh_ttl
        self.reuse_grace = reuse_grace
        self.throttle = throttle
        self.registrations = registrations
        # Refusals (throttled, hashing busy) are audited once per key and minute.
        self.audits = AuditLimiter()
        # Where revocations go for the gateways (None: database only, in unit tests).
        self.denylist = denylist
        # An access token of a session may live this long after its last refresh token.
        self.revoke_window = float(issuer.access_ttl + MARGIN)

    async def register(self, req: Credentials) -> RegisterReply:
        if not USERNAME.fullmatch(req.username):
            raise ChatError(ErrorCode.BAD_REQUEST,
                            "username must be 3-32 characters of A-Z a-z 0-9 _ . -")
        if not PASSWORD_MIN <= len(req.password) <= PASSWORD_MAX:
            raise ChatError(ErrorCode.BAD_REQUEST,
                            f"password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters")
        if self.registrations is not None:
            try:
                self.registrations.take(req.remote)
            except ChatError:
                self.audits.audit(log, "registration throttled", req.remote or "",
                                  remote=req.remote)
                raise
        try:
            password_hash = await self.passwords.hash(req.password)
        except ChatError:
            self.audits.audit(log, "registration refused: hashing busy", req.remote or "",
                              remote=req.remote)
            raise
        user = User(id=new_user_id(), name=req.username)
        try:
            await self.store.create_user(user.id, user.name, password_hash)
        except NameTakenError:
            raise ChatError(ErrorCode.CONFLICT, "username is taken") from None
        event(log, "user registered", user=user.id, remote=req.remote)
        return RegisterReply(user=user)

    async def login(self, req: Credentials) -> TokenPair:
        stamp = self._login_attempt(req)
        try:
            # Same work whether or not the user exists: one lookup, one argon2 verify.
            row = await self.store.user_by_name(req.username)
            ok = await self.passwords.verify(row.password_hash if row else None,
                                             req.password[:PASSWORD_MAX])
        except BaseException as exc:
            # Not a guess (hashing busy, database away): the attempt is taken back.
            if self.throttle is not None:
                self.throttle.succeeded(req.username, req.remote, stamp)
            if isinstance(exc, ChatError) and exc.code is ErrorCode.UNAVAILABLE:
                self.audits.audit(log, "login refused: hashing busy", req.remote or "",
                                  remote=req.remote)
            raise
        if row is None or not ok or len(req.password) > PASSWORD_MAX:
            audit(log, "login failed", username=_for_log(req.username), remote=req.remote,
                  reason="unknown user" if row is None else "wrong password")
            if self.throttle is not None:
                self.throttle.failed(req.username, req.remote, stamp)
            raise ChatError(ErrorCode.UNAUTHORIZED, BAD_CREDENTIALS)
        if self.throttle is not None:
            self.throttle.succeeded(req.username, req.remote, stamp)
        if row.disabled:  # told only to whoever knows the password
            audit(log, "login refused: account disabled", user=row.id, remote=req.remote)
            raise ChatError(ErrorCode.FORBIDDEN, DISABLED)
        if self.passwords.needs_rehash(row.password_hash):
            with contextlib.suppress(ChatError):  # best effort: next login, if busy now
                await self.store.set_password_hash(row.id,
                                                   await self.passwords.hash(req.password))
        refresh, refresh_hash = new_refresh_token()
        family = new_family()
        await self.store.add_refresh(refresh_hash, row.id, family, self.refresh_ttl)
        return self._pair(row.id, row.name, refresh, family)

    def _login_attempt(self, req: Credentials) -> float:
        """Check the login throttle and count the attempt (taken back unless it fails)."""
        if self.throttle is None:
            return 0.0
        try:
            return self.throttle.attempt(req.username, req.remote)
        except ChatError:
            key = f"{req.username.casefold()}\x00{req.remote or ''}"
            self.audits.audit(log, "login throttled", key, username=_for_log(req.username),
                              remote=req.remote)
            raise

    async def refresh(self, req: RefreshRequest) -> TokenPair:
        old_hash = refresh_token_hash(req.refresh_token)
        refresh, refresh_hash = new_refresh_token()
        rotated = await self.store.rotate_refresh(old_hash, refresh_hash, self.refresh_ttl)
        if rotated is None:
            await self._refused(old_hash, req.remote)
            raise ChatError(ErrorCode.UNAUTHORIZED, BAD_REFRESH)
        user_id, name, family = rotated
        return self._pair(user_id, name, refresh, family)

    async def logout(self, req: RefreshRequest) -> Empty:
        """End the token's session. Idempotent: unknown, spent or revoked tokens
        answer the same, and a known one's session is denylisted again (a retry
        after a lost write repairs it)."""
        family = await self.store.revoke_family_of(refresh_token_hash(req.refresh_token))
        if family is not None and self.denylist is not None:
            await self.denylist.revoke_sessions([family])
        return Empty()

    async def password(self, req: PasswordChange) -> Empty:
        """Change the caller's password (the current one is required); every
        session of theirs ends, this one included."""
        row = await self.store.user_by_id(req.caller.id)
        ok = await self.passwords.verify(row.password_hash if row else None,
                                         req.password[:PASSWORD_MAX])
        if row is None or row.disabled or not ok or len(req.password) > PASSWORD_MAX:
            audit(log, "password change refused", user=req.caller.id, remote=req.remote)
            raise ChatError(ErrorCode.UNAUTHORIZED, "wrong password")
        if not PASSWORD_MIN <= len(req.new_password) <= PASSWORD_MAX:
            raise ChatError(ErrorCode.BAD_REQUEST,
                            f"password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters")
        new_hash = await self.passwords.hash(req.new_password)
        ended = await self.store.change_password(row.id, new_hash, self.revoke_window)
        await self._denylist(ended)
        audit(log, "password changed: all sessions revoked", user=row.id, remote=req.remote,
              sessions=len(ended.sessions))
        return Empty()

    async def disable(self, req: DisableRequest) -> DisableReply:
        """Disable an account (no login, no refresh, every session ends) or enable it."""
        result = await self.store.set_disabled(req.name, req.disabled, self.revoke_window)
        if result is None:
            raise ChatError(ErrorCode.NOT_FOUND, "no such user")
        row, ended = result
        if ended is not None:
            await self._denylist(ended)
        audit(log, "account disabled: all sessions revoked" if req.disabled
              else "account enabled", user=row.id,
              sessions=len(ended.sessions) if ended else 0)
        return DisableReply(user=User(id=row.id, name=row.name), disabled=req.disabled,
                            sessions=len(ended.sessions) if ended else 0)

    async def users(self, req: UsersRequest) -> UsersReply:
        """Public profiles (id, name) by id or name: for invites, DMs and blocks."""
        if len(req.ids) > MAX_LOOKUP or len(req.names) > MAX_LOOKUP:
            raise ChatError(ErrorCode.BAD_REQUEST, f"at most {MAX_LOOKUP} ids and names each")
        if not 1 <= req.limit <= limits.USERS_PREFIX_MAX:
            raise ChatError(ErrorCode.BAD_REQUEST,
                            f"limit must be between 1 and {limits.USERS_PREFIX_MAX}")
        if req.prefix is not None and not _NAME_PREFIX.fullmatch(req.prefix):
            raise ChatError(ErrorCode.BAD_REQUEST, "prefix: 1-32 characters of a name")
        found = await self.store.users(req.ids, req.names) if req.ids or req.names else []
        if req.prefix is not None:
            found += await self.store.users_by_prefix(req.prefix, req.limit)
        return UsersReply(users=[User(id=row_id, name=name) for row_id, name in found])

    async def jwks(self, _: Empty) -> JwksReply:
        return JwksReply(keys=self.key.jwks())

    def _pair(self, user_id: str, name: str, refresh: str, sid: str) -> TokenPair:
        return TokenPair(access_token=self.issuer.access_token(user_id, name, sid=sid),
                         refresh_token=refresh, expires_in=self.issuer.access_ttl)

    async def _denylist(self, ended: Ended) -> None:
        if self.denylist is not None:
            await self.denylist.revoke_user(ended.user_id, ended.at)
            await self.denylist.revoke_sessions(ended.sessions)

    async def _refused(self, token_hash: bytes, remote: str | None) -> None:
        """Why a refresh was refused; a replay past the grace period ends every
        session of the user (docs/protocol.md §2)."""
        spent = await self.store.spent_token(token_hash)
        if spent is None or spent.revoked or spent.expired or spent.used_ago is None:
            return
        if spent.used_ago < self.reuse_grace:
            event(log, "concurrent refresh refused", user=spent.user_id, remote=remote)
            return
        ended = await self.store.end_sessions(spent.user_id, self.revoke_window)
        await self._denylist(ended)
        audit(log, "refresh token reuse: all sessions revoked", user=spent.user_id,
              remote=remote, used_ago=round(spent.used_ago, 1), sessions=len(ended.sessions))
