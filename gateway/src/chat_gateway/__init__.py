"""chat-gateway: the only HTTP/WebSocket entry of the chat system.

app         wiring: builds the parts and the routes; start and drain order
main        the chat-gateway command
config      settings from CHAT_GATEWAY_* variables
session     one socket's rules, sans-I/O: auth, decoding, checks, acks, strikes
endpoint    /ws: the I/O around a Session (read, make calls, write, close)
handlers    what each accepted frame does on the bus and in the room hub
connection  one socket's output: identity, rooms, blocked set, transport writes
limits      token bucket and abuse strikes
usercap     the per-user connection cap across gateways (4409)
sockets     the sockets open here, by user: blocks notices, drain
tokens      local JWT verification with the published keys
rooms       membership: one LocalRoom per room held, join/leave, state notices
localroom   one held room: subscriptions, the member map, fan-out of a frame
relay       live events in order (gap repair, catch-up); room from the subject
chains      a blocker's prev_seq chain across the events it is not shown
presence    presence entries and heartbeat, typing out, presence signals in
typists     typing: coalescing and expiry
services    service requests (chat_contract.rpc) and stream access, one timeout
rest        the auth and /v1/me REST routes, what every REST route shares
rest_rooms  the rooms, DM, read, search and block REST routes
wsframe     one pre-built WebSocket frame per event, written to many sockets
clock       RFC 3339 timestamps
"""
