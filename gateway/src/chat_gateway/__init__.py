"""chat-gateway: the only HTTP/WebSocket entry of the chat system.

config      settings from CHAT_GATEWAY_* variables
wsframe     one pre-built WebSocket frame per event, written to many sockets
connection  one client socket: identity, joined rooms, outbound writes, limits
rooms       room subscriptions with local members, gap repair, fan-out,
            room state notices (read, removal, archive)
chains      a blocker's prev_seq chain across the events it is not shown
presence    presence and typing relay for rooms with local members
typists     typing: coalescing and expiry
sessions    the per-user connection cap across gateways (4409)
limits      token bucket and abuse strikes
clock       RFC 3339 timestamps
handlers    what each client frame does
endpoint    the /ws endpoint: authenticate, read loop, close codes
rest        the auth and /v1/me REST routes, shared REST helpers
rest_rooms  the rooms, DM, read, search and block REST routes
tokens      local JWT verification with the published keys
component   wiring and the drain order
"""
