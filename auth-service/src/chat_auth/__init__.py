"""chat-auth: the only holder of the signing key (docs/protocol.md §2).

config     AuthSettings from CHAT_* environment variables
keys       the Ed25519 signing key, its RFC 7638 ``kid`` and the public JWKS
passwords  argon2id hashing off the event loop, constant-time "no such user"
tokens     access JWTs and opaque single-use refresh tokens
store      PostgreSQL queries (schema ``auth``, migrations/ in this package)
handlers   the operations: register, login, refresh, logout, users, jwks
service    the Component: pool, migrations, key, micro service ``auth`` (chat_contract.rpc.AUTH_*)
main       the ``chat-auth`` console script
"""
