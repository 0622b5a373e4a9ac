// Against a real stack: run by tests/e2e/test_js_client.py, which starts the
// services and two gateways and passes their URLs (skipped without them).
import { test } from "node:test";
import assert from "node:assert/strict";
import { ChatClient, ChatError } from "../chat-client.js";

const env = process.env;
const urls = env.CHAT_JS_GATEWAYS ? env.CHAT_JS_GATEWAYS.split(",") : [];
const users = env.CHAT_JS_USERS ? JSON.parse(env.CHAT_JS_USERS) : [];
const skip = urls.length < 2 ? "needs CHAT_JS_GATEWAYS (run tests/e2e/test_js_client.py)" : false;
const ws = (u) => u.replace(/^http/, "ws") + "/ws";

async function client(i, user, extra = {}) {
  const c = new ChatClient({ baseUrl: urls[i], wsUrl: ws(urls[i]), backoffBase: 100, backoffMax: 1000, ...extra });
  await c.login(user.username, user.password);
  await c.connect();
  return c;
}
async function eventually(check, what, ms = 20000) {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) assert.fail("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 50));
  }
}
const room = (p) => p + "_" + Math.random().toString(16).slice(2, 10);

test("two clients on two gateways chat", { skip }, async () => {
  const a = await client(0, users[0]), b = await client(1, users[1]);
  try {
    assert.notEqual(a.welcome.node, b.welcome.node);
    const r = room("js");
    await a.join(r); await b.join(r);
    const atB = [], atA = [];
    b.on("message", (m) => atB.push(m));
    a.on("message", (m) => atA.push(m));
    const sent = await a.send(r, "hello from a");
    assert.equal(typeof sent.msg_id, "string");
    await b.send(r, "hello from b");
    await eventually(() => atB.length === 2 && atA.length === 2, "both messages at both");
    assert.deepEqual(atB.map((m) => m.text), ["hello from a", "hello from b"]);
    assert.equal(atB[0].msg_id, sent.msg_id);
    assert.equal(atB[0].sender.name, users[0].username);
    const h = await b.history(r);
    assert.deepEqual(h.messages.map((m) => m.msg_id), atB.map((m) => m.msg_id));
  } finally { a.close(); b.close(); }
});

test("refusals are typed errors", { skip }, async () => {
  const a = await client(0, users[0]);
  try {
    await assert.rejects(a.request("join", { room: "not a room!" }), (e) => e instanceof ChatError && e.code === "bad_request");
    const r = room("err");
    await a.join(r);
    await assert.rejects(a.send(r, "x".repeat(4001)), (e) => e instanceof ChatError && e.code === "too_large");
    await assert.rejects(a.request("send", { room: room("nj"), text: "hi" }), (e) => e.code === "forbidden");
    const anon = new ChatClient({ baseUrl: urls[0] });
    await assert.rejects(anon.login(users[0].username, "wrong password!"),
      (e) => e instanceof ChatError && e.code === "unauthorized" && e.status === 401);
    assert.ok(await a.refresh());
    assert.deepEqual(await a.request("auth", { token: a.tokens.access }), {});
  } finally { a.close(); }
});

test("a gateway drains: the client reconnects to the other and misses nothing", { skip: skip || (!env.CHAT_JS_DRAIN_PID && "needs CHAT_JS_DRAIN_PID") }, async () => {
  // the receiver starts on gateway 1 (the one that drains); reconnects go round the list
  const rx = await client(0, users[2], { wsUrls: [ws(urls[0]), ws(urls[1])] });
  const tx = await client(1, users[3]);
  const states = [];
  rx.on("state", (s) => states.push(s));
  try {
    const r = room("drain");
    await rx.join(r); await tx.join(r);
    const got = [];
    rx.on("message", (m) => got.push(m));
    const acked = [];
    const sending = (async () => {
      for (let i = 0; i < 40; i++) {
        acked.push((await tx.send(r, "m" + i)).msg_id);
        await new Promise((res) => setTimeout(res, 120)); // under 10/s (§3.6)
      }
    })();
    await eventually(() => got.length >= 10, "messages before the drain");
    process.kill(Number(env.CHAT_JS_DRAIN_PID), "SIGTERM");
    await sending;
    await eventually(() => got.length >= acked.length, "every acked message after the drain", 30000);
    assert.ok(states.some((s) => s.state === "reconnecting" && s.code === 1012), JSON.stringify(states));
    assert.ok(states.some((s) => s.state === "open"));
    const ids = got.map((m) => m.msg_id);
    assert.equal(new Set(ids).size, ids.length, "delivered twice");
    assert.deepEqual(ids, acked, "lost or out of order");
    for (let i = 1; i < got.length; i++) assert.ok(got[i].seq > got[i - 1].seq);
  } finally { rx.close(); tx.close(); }
});
