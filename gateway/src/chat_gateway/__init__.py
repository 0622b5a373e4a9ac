"""chat-gateway: the only HTTP/WebSocket entry of the chat system.

config      settings from CHAT_GATEWAY_* variables
wsframe     one pre-built WebSocket frame per event, written to many sockets
connection  one client socket: identity, joined rooms, outbound writes, limits
rooms       room subscriptions with local members, gap repair, fan-out
handlers    what each client frame does
endpoint    the /ws endpoint: authenticate, read loop, close codes
rest        the /v1 REST routes (calls services over NATS)
tokens      local JWT verification with the published keys
component   wiring and the drain order
"""
