"""Access-token claims (docs/protocol.md §2)."""

from __future__ import annotations

import msgspec

DEFAULT_ISSUER = "chat-auth"
DEFAULT_AUDIENCE = "chat"
# EdDSA (Ed25519): small keys, fast verify, no parameter choices to get wrong.
SIGNING_ALGORITHM = "EdDSA"
REQUIRED_CLAIMS = ("sub", "name", "iss", "aud", "iat", "exp", "jti")


class AccessClaims(msgspec.Struct, frozen=True):
    sub: str
    name: str
    iss: str
    aud: str
    iat: int
    exp: int
    jti: str
    nbf: int | None = None
    # The login session (its refresh-token family): logout ends every token
    # carrying it. Absent only from tokens issued before sessions existed.
    sid: str | None = None
