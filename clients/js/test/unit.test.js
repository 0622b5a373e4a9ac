// Pure parts: backoff, close codes, gap detection, dedupe; and the client against a fake socket.
import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, closeAction, RoomLog, ChatClient, ChatError, ERROR_CODES } from "../chat-client.js";

test("backoff: exponential cap, full jitter, bounded", () => {
  assert.equal(backoffDelay(0, { random: () => 0 }), 0);
  assert.equal(backoffDelay(0, { random: () => 0.999999, base: 500 }), 499);
  assert.equal(backoffDelay(3, { random: () => 0.5, base: 500 }), 2000);
  assert.equal(backoffDelay(50, { random: () => 0.5, base: 500, max: 10000 }), 5000);
  for (let a = 0; a < 20; a++) {
    const d = backoffDelay(a);
    assert.ok(d >= 0 && d < Math.min(10000, 500 * 2 ** a));
  }
});

test("close codes: which reconnect, refresh or stop", () => {
  for (const c of [1001, 1006, 1011, 1012, 1013]) assert.equal(closeAction(c), "reconnect");
  assert.equal(closeAction(4401), "refresh");
  for (const c of [4403, 4409, 1008]) assert.equal(closeAction(c), "stop");
});

test("gap detection from prev_seq", () => {
  const log = new RoomLog();
  assert.equal(log.gap({ seq: 5, prev_seq: 3 }), null); // nothing held yet
  log.last = 3;
  assert.equal(log.gap({ seq: 5, prev_seq: 3 }), null);
  assert.equal(log.gap({ seq: 9, prev_seq: 7 }), 3);
  assert.equal(log.gap({ seq: 2, prev_seq: 1 }), null); // old: a duplicate, not a gap
});

test("dedupe by msg_id and seq; edits and reactions are new", () => {
  const log = new RoomLog();
  assert.ok(log.accept({ msg_id: "m1", seq: 1 }));
  assert.ok(!log.accept({ msg_id: "m1", seq: 1 }));
  assert.ok(log.accept({ msg_id: "m1", seq: 4 })); // an edit of m1
  assert.ok(log.accept({ msg_id: "m1", seq: 5 })); // a reaction on m1
  assert.equal(log.last, 5);
  assert.ok(log.accept({ msg_id: "m0", seq: 0.5 }));
  assert.equal(log.last, 5);
  const small = new RoomLog(2);
  small.accept({ msg_id: "a", seq: 1 }); small.accept({ msg_id: "b", seq: 2 }); small.accept({ msg_id: "c", seq: 3 });
  assert.equal(small.seen.size, 2);
});

test("ChatError carries a typed code", () => {
  const e = new ChatError("forbidden", "no");
  assert.ok(e instanceof Error);
  assert.equal(e.code, "forbidden");
  assert.ok(ERROR_CODES.includes("rate_limited"));
});

class FakeSocket {
  static all = [];
  constructor(url) { this.url = url; this.sent = []; FakeSocket.all.push(this); setTimeout(() => this.onopen?.()); }
  send(s) { this.sent.push(JSON.parse(s)); }
  close() {}
  frame(f) { this.onmessage?.({ data: JSON.stringify(f) }); }
  drop(code) { this.onclose?.({ code, reason: "" }); }
}

function fakeClient() {
  FakeSocket.all = [];
  return new ChatClient({
    baseUrl: "http://x", wsUrls: ["ws://a/ws", "ws://b/ws"], WebSocket: FakeSocket, random: () => 0,
    tokens: { access: "t", refresh: "r", expiresAt: Date.now() + 600000 }, requestTimeout: 1000,
  });
}
const tick = () => new Promise((r) => setTimeout(r, 5));

test("client: acks resolve, errors reject typed, gaps fetched, duplicates dropped, reconnect rejoins with since", async () => {
  const c = fakeClient();
  const got = [];
  c.on("message", (m) => got.push(m.seq));
  const welcome = c.connect();
  await tick();
  let s = FakeSocket.all[0];
  assert.deepEqual(s.sent[0], { type: "auth", token: "t" });
  s.frame({ type: "welcome", user: { id: "u", name: "n" }, node: "gw-1", session: "s", heartbeat: 25 });
  await welcome;
  const j = c.join("r");
  await tick();
  assert.deepEqual(s.sent[1], { type: "join", room: "r", id: s.sent[1].id });
  s.frame({ type: "ack", id: s.sent[1].id, room: "r", members: [], last_seq: 10, missed: [] });
  assert.equal((await j).last_seq, 10);

  const bad = c.request("send", { room: "r", text: "x" });
  await tick();
  s.frame({ type: "error", id: s.sent[2].id, code: "too_large", message: "big" });
  await assert.rejects(bad, (e) => e instanceof ChatError && e.code === "too_large");

  const m = (seq, prev) => ({ type: "message", room: "r", msg_id: "m" + seq, seq, prev_seq: prev });
  s.frame(m(11, 10));
  s.frame(m(11, 10)); // duplicate
  s.frame(m(14, 12)); // gap: 12 missing
  await tick();
  const h = s.sent[3];
  assert.equal(h.type, "history"); assert.equal(h.after, 11);
  s.frame({ type: "ack", id: h.id, messages: [{ msg_id: "m12", seq: 12, prev_seq: 11 }], has_more: false });
  await tick();
  assert.deepEqual(got, [11, 12, 14]);

  s.drop(1012);
  assert.equal(c.state, "reconnecting");
  await tick();
  s = FakeSocket.all[1];
  assert.equal(s.url, "ws://b/ws");
  s.frame({ type: "welcome", user: { id: "u", name: "n" }, node: "gw-2", session: "s2", heartbeat: 25 });
  await tick();
  const rejoin = s.sent.find((f) => f.type === "join");
  assert.equal(rejoin.since, 14);
  s.frame({ type: "ack", id: rejoin.id, room: "r", members: [], last_seq: 15, missed: [m(14, 12), m(15, 14)] });
  await tick();
  assert.deepEqual(got, [11, 12, 14, 15]);

  let stopped = null;
  c.on("stopped", (e) => { stopped = e; });
  s.drop(4409);
  assert.equal(c.state, "stopped");
  assert.equal(stopped.closeCode, 4409);
  c.close();
});
