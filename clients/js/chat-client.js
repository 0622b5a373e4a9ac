// @ts-check
/**
 * chat-client: the JavaScript client of the chat protocol (docs/protocol.md).
 * An ES module with no dependencies and no build step; types in JSDoc and
 * chat-client.d.ts. Works in browsers and in Node (pass a WebSocket
 * implementation, or run Node 20 with --experimental-websocket; Node 22+ has one).
 * @module chat-client
 */

/** Error codes of §3.2 (and REST, §8). */
export const ERROR_CODES = Object.freeze([
  "bad_request", "unauthorized", "forbidden", "not_found", "conflict",
  "rate_limited", "too_large", "unavailable", "internal",
]);

/** A refused request (an `error` frame, a REST error, or a lost connection). */
export class ChatError extends Error {
  /**
   * @param {string} code one of ERROR_CODES
   * @param {string} message
   * @param {{id?: string, status?: number, request?: string}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(code + ": " + message);
    this.name = "ChatError";
    /** @type {string} */
    this.code = code;
    /** @type {string} */
    this.detail = message;
    this.id = extra.id;
    this.status = extra.status;
    this.request = extra.request;
  }
}

const HTTP_CODES = /** @type {Record<number, string>} */ ({
  400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict",
  413: "too_large", 429: "rate_limited", 500: "internal", 503: "unavailable",
});

// ---- pure parts -------------------------------------------------------------

/**
 * Exponential backoff with full jitter: a uniform delay in [0, min(max, base·2^attempt)).
 * @param {number} attempt 0 for the first retry
 * @param {{base?: number, max?: number, random?: () => number}} [opts]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, opts = {}) {
  const base = opts.base ?? 500, max = opts.max ?? 10000, random = opts.random ?? Math.random;
  const cap = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * cap);
}

/**
 * What a close code asks of a client (§4).
 * @param {number} code
 * @returns {"reconnect" | "refresh" | "stop"}
 */
export function closeAction(code) {
  if (code === 4401) return "refresh";
  if (code === 4403 || code === 4409 || code === 1008 || code === 1009 || code === 1000) return "stop";
  return "reconnect"; // 1001, 1006, 1011, 1012, 1013 and anything unknown
}

/**
 * One room's sequence chain: the last seq held, gaps and duplicates (§3.4).
 */
export class RoomLog {
  /** @param {number} [memory] how many event keys to remember for dedupe */
  constructor(memory = 5000) {
    /** @type {number | null} the last seq held (null before the first join) */
    this.last = null;
    this.memory = memory;
    /** @type {Set<string>} */
    this.seen = new Set();
  }

  /** @param {{msg_id?: string, seq: number}} ev */
  static key(ev) { return (ev.msg_id ?? "") + ":" + ev.seq; }

  /**
   * Would this live event leave a gap? Returns the seq to fetch `after`, or null.
   * @param {{seq: number, prev_seq?: number}} ev
   * @returns {number | null}
   */
  gap(ev) {
    if (this.last == null || ev.prev_seq == null || ev.seq <= this.last) return null;
    return ev.prev_seq !== this.last ? this.last : null;
  }

  /**
   * Take an event (live, missed or history): false when already seen.
   * Moves `last` forward.
   * @param {{msg_id?: string, seq: number}} ev
   * @returns {boolean}
   */
  accept(ev) {
    const k = RoomLog.key(ev);
    if (this.seen.has(k)) return false;
    this.seen.add(k);
    if (this.seen.size > this.memory) this.seen.delete(this.seen.values().next().value ?? "");
    if (this.last == null || ev.seq > this.last) this.last = ev.seq;
    return true;
  }
}

// ---- the client -------------------------------------------------------------

/**
 * @typedef {{access_token: string, refresh_token: string, expires_in: number, token_type?: string}} TokenPair
 * @typedef {{access: string, refresh: string, expiresAt: number}} Tokens
 */

let idCounter = 0;
function randomId() {
  const c = /** @type {any} */ (globalThis).crypto;
  if (c && c.randomUUID) return c.randomUUID();
  return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2) + "-" + (++idCounter);
}

export class ChatClient {
  /**
   * @param {import("./chat-client").ChatClientOptions} [options]
   */
  constructor(options = {}) {
    const g = /** @type {any} */ (globalThis);
    this.baseUrl = (options.baseUrl ?? (g.location ? g.location.origin : "")).replace(/\/$/, "");
    const ws = options.wsUrls ?? (options.wsUrl ? [options.wsUrl] : [this.baseUrl.replace(/^http/, "ws") + "/ws"]);
    /** @type {string[]} */
    this.wsUrls = ws;
    this.WebSocket = options.WebSocket ?? g.WebSocket;
    this.fetch = options.fetch ?? ((/** @type {any} */ u, /** @type {any} */ i) => g.fetch(u, i));
    this.backoff = { base: options.backoffBase ?? 500, max: options.backoffMax ?? 10000 };
    this.random = options.random ?? Math.random;
    this.refreshMargin = options.refreshMargin ?? 60000;
    this.requestTimeout = options.requestTimeout ?? 15000;
    this.onTokens = options.onTokens;
    /** @type {Tokens | null} */
    this.tokens = options.tokens ?? null;
    /** @type {"idle" | "connecting" | "open" | "reconnecting" | "stopped"} */
    this.state = "idle";
    /** @type {any} */
    this.user = null;
    /** @type {any} */
    this.socket = null;
    this.attempt = 0;
    this.urlIndex = 0;
    this.nextId = 1;
    /** @type {Map<string, {resolve: (a: any) => void, reject: (e: any) => void, timer: any, type: string}>} */
    this.pending = new Map();
    /** @type {Map<string, {log: RoomLog, joined: boolean, password?: string, fetching: Promise<void> | null, queue: any[]}>} */
    this.rooms = new Map();
    /** @type {Map<string, Set<(ev: any) => void>>} */
    this.listeners = new Map();
    /** @type {any} */ this.retryTimer = null;
    /** @type {any} */ this.refreshTimer = null;
    /** @type {Promise<boolean> | null} */ this.refreshing = null;
    /** @type {Array<{resolve: (w: any) => void, reject: (e: any) => void}>} */
    this.waiters = [];
    this.triedRefresh = false;
    if (this.tokens) this._scheduleRefresh();
  }

  // ---- events ----
  /**
   * @param {string} type "message" | "reaction" | "presence" | "typing" | "read" | "system" | "welcome" | "state" | "stopped" | "tokens"
   * @param {(ev: any) => void} fn
   * @returns {() => void} unsubscribe
   */
  on(type, fn) {
    let s = this.listeners.get(type);
    if (!s) this.listeners.set(type, s = new Set());
    s.add(fn);
    return () => this.off(type, fn);
  }
  /** @param {string} type @param {(ev: any) => void} fn */
  off(type, fn) { this.listeners.get(type)?.delete(fn); }
  /** @param {string} type @param {any} ev */
  emit(type, ev) {
    for (const fn of [...(this.listeners.get(type) ?? [])]) {
      try { fn(ev); } catch (e) { setTimeout(() => { throw e; }); }
    }
  }

  // ---- REST (§2, §5) ----
  /**
   * @param {string} method @param {string} path @param {any} [body] @param {string} [token]
   * @returns {Promise<any>}
   */
  async http(method, path, body, token) {
    /** @type {Record<string, string>} */
    const headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await this.fetch(this.baseUrl + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new ChatError("unavailable", String(/** @type {any} */ (e)?.message ?? e));
    }
    const data = res.status === 204 ? {} : await res.json().catch(() => ({}));
    if (!res.ok) {
      const e = data.error || {};
      throw new ChatError(e.code || HTTP_CODES[res.status] || "internal", e.message || res.statusText, { status: res.status });
    }
    return data;
  }
  /** An authenticated REST call; a 401 refreshes once and retries. */
  async rest(/** @type {string} */ method, /** @type {string} */ path, /** @type {any} */ body) {
    if (!this.tokens) throw new ChatError("unauthorized", "not logged in");
    try { return await this.http(method, path, body, this.tokens.access); } catch (e) {
      if (!(e instanceof ChatError) || e.status !== 401 || !(await this.refresh())) throw e;
      return this.http(method, path, body, this.tokens.access);
    }
  }
  /** @param {string} username @param {string} password */
  register(username, password) { return this.http("POST", "/v1/auth/register", { username, password }); }
  /** @param {string} username @param {string} password @returns {Promise<Tokens>} */
  async login(username, password) {
    this.setTokens(await this.http("POST", "/v1/auth/login", { username, password }));
    return /** @type {Tokens} */ (this.tokens);
  }
  /** @param {TokenPair} pair */
  setTokens(pair) {
    this.tokens = { access: pair.access_token, refresh: pair.refresh_token, expiresAt: Date.now() + pair.expires_in * 1000 };
    this._scheduleRefresh();
    if (this.onTokens) this.onTokens(this.tokens);
    this.emit("tokens", this.tokens);
  }
  /** Refresh the token pair (single flight: a refresh token works once). @returns {Promise<boolean>} */
  refresh() {
    if (!this.refreshing) {
      this.refreshing = (async () => {
        try {
          if (!this.tokens) return false;
          this.setTokens(await this.http("POST", "/v1/auth/refresh", { refresh_token: this.tokens.refresh }));
          if (this.state === "open") this.request("auth", { token: this.tokens.access }).catch(() => {});
          return true;
        } catch (e) { return false; } finally { this.refreshing = null; }
      })();
    }
    return this.refreshing;
  }
  /** Log out this session (§2) and close. */
  async logout() {
    const t = this.tokens;
    this.close();
    this.tokens = null;
    if (t) await this.http("POST", "/v1/auth/logout", { refresh_token: t.refresh }).catch(() => {});
  }
  _scheduleRefresh() {
    clearTimeout(this.refreshTimer);
    if (!this.tokens || this.state === "stopped") return;
    const delay = Math.max(5000, this.tokens.expiresAt - this.refreshMargin - Date.now());
    this.refreshTimer = setTimeout(() => { this.refresh(); }, Math.min(delay, 2 ** 31 - 1));
    if (this.refreshTimer && this.refreshTimer.unref) this.refreshTimer.unref();
  }

  // ---- WebSocket session (§3) ----
  /** Connect (or reconnect); resolves with the `welcome`. @returns {Promise<any>} */
  connect() {
    if (this.state === "stopped" || this.state === "idle") this.state = "connecting";
    const p = this.ready();
    this._open();
    return p;
  }
  /** Resolves at the next (or current) welcome; rejects if the client stops. @returns {Promise<any>} */
  ready() {
    if (this.state === "open") return Promise.resolve(this.welcome);
    if (this.state === "stopped" || this.state === "idle") return Promise.reject(new ChatError("unavailable", "not connected"));
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }
  _open() {
    clearTimeout(this.retryTimer);
    if (!this.tokens) return this._stop(new ChatError("unauthorized", "not logged in"));
    if (this.socket) { const old = this.socket; this.socket = null; try { old.close(1000); } catch (e) { /* closed */ } }
    if (!this.WebSocket) return this._stop(new ChatError("internal", "no WebSocket implementation"));
    const url = this.wsUrls[this.urlIndex % this.wsUrls.length];
    const sock = new this.WebSocket(url);
    this.socket = sock;
    this.welcome = null;
    sock.onopen = () => { if (sock === this.socket && this.tokens) sock.send(JSON.stringify({ type: "auth", token: this.tokens.access })); };
    sock.onmessage = (/** @type {any} */ ev) => { if (sock === this.socket) this._frame(ev.data); };
    sock.onclose = (/** @type {any} */ ev) => { if (sock === this.socket) this._closed(ev.code, ev.reason || ""); };
    sock.onerror = () => {};
  }
  /** Close for good (no reconnect). */
  close() {
    clearTimeout(this.retryTimer);
    clearTimeout(this.refreshTimer);
    const s = this.socket;
    this.socket = null;
    this._fail(new ChatError("unavailable", "closed"));
    this.state = "stopped";
    for (const w of this.waiters.splice(0)) w.reject(new ChatError("unavailable", "closed"));
    if (s) { try { s.close(1000); } catch (e) { /* closed */ } }
  }
  /** @param {ChatError} err */
  _fail(err) {
    for (const p of this.pending.values()) { clearTimeout(p.timer); p.reject(err); }
    this.pending.clear();
  }
  /** @param {ChatError} err */
  _stop(err) {
    this.close();
    this.emit("stopped", err);
  }
  /** @param {number} code @param {string} reason */
  async _closed(code, reason) {
    this.socket = null;
    const lost = new ChatError("unavailable", "connection lost (" + code + ")");
    /** @type {any} */ (lost).lost = true;
    this._fail(lost);
    for (const r of this.rooms.values()) r.joined = false;
    if (this.state === "stopped") return;
    const action = closeAction(code);
    if (action === "stop") {
      const err = new ChatError(code === 4409 ? "conflict" : code === 4403 ? "forbidden" : "bad_request",
        "closed " + code + (reason ? " " + reason : ""));
      /** @type {any} */ (err).closeCode = code;
      return this._stop(err);
    }
    this.state = "reconnecting";
    if (action === "refresh") {
      if (this.triedRefresh || !(await this.refresh())) {
        const err = new ChatError("unauthorized", "closed 4401" + (reason ? " " + reason : ""));
        /** @type {any} */ (err).closeCode = code;
        return this._stop(err);
      }
      this.triedRefresh = true;
    }
    this.urlIndex++; // the next gateway, if there are several
    const delay = action === "refresh" ? 0 : backoffDelay(this.attempt++, { ...this.backoff, random: this.random });
    this.emit("state", { state: "reconnecting", code, reason, delay });
    this.retryTimer = setTimeout(() => this._open(), delay);
  }
  /** @param {any} data */
  _frame(data) {
    let f;
    try { f = JSON.parse(typeof data === "string" ? data : String(data)); } catch (e) { return; }
    if (f.type === "ack" || (f.type === "error" && f.id != null)) {
      const p = this.pending.get(f.id);
      if (!p) return;
      this.pending.delete(f.id);
      clearTimeout(p.timer);
      if (f.type === "ack") { const { type: _t, id: _i, ...rest } = f; p.resolve(rest); }
      else p.reject(new ChatError(f.code, f.message, { id: f.id, request: p.type }));
      return;
    }
    switch (f.type) {
      case "welcome": return this._welcome(f);
      case "message": case "reaction": return this._live(f);
      case "error": return this.emit("error", new ChatError(f.code, f.message));
      default: return this.emit(f.type, f);
    }
  }
  /** @param {any} f */
  _welcome(f) {
    this.state = "open";
    this.welcome = f;
    this.user = f.user;
    this.attempt = 0;
    this.triedRefresh = false;
    const held = [...this.rooms]; // rooms joined before; a join made by a welcome listener is not doubled
    for (const w of this.waiters.splice(0)) w.resolve(f);
    this.emit("state", { state: "open", node: f.node });
    this.emit("welcome", f);
    for (const [id, r] of held) {
      this._join(id, r).then((ack) => this.emit("joined", { room: id, ack, rejoin: true }),
        (e) => this.emit("rejoinFailed", { room: id, error: e }));
    }
  }

  /**
   * Send one request and wait for its ack (the result fields) or a ChatError.
   * Waits for the connection while (re)connecting.
   * @param {string} type
   * @param {Record<string, any>} [fields]
   * @param {{timeout?: number}} [opts]
   * @returns {Promise<any>}
   */
  async request(type, fields = {}, opts = {}) {
    if (this.state !== "open" && type !== "auth") await this.ready();
    const sock = this.socket;
    if (!sock || this.state !== "open") throw new ChatError("unavailable", "not connected", { request: type });
    const id = "r" + this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ChatError("unavailable", type + " timed out", { id, request: type }));
      }, opts.timeout ?? this.requestTimeout);
      this.pending.set(id, { resolve, reject, timer, type });
      sock.send(JSON.stringify({ ...fields, type, id }));
    });
  }

  // ---- rooms (§3.3) with rejoin, gap fetch and dedupe ----
  /**
   * Join a room; it is rejoined with `since` after every reconnect.
   * Missed messages are delivered as "message"/"reaction" events.
   * @param {string} room @param {{password?: string}} [opts]
   */
  async join(room, opts = {}) {
    let r = this.rooms.get(room);
    const fresh = !r;
    if (!r) r = { log: new RoomLog(), joined: false, password: opts.password, fetching: null, queue: [] };
    if (opts.password) r.password = opts.password;
    if (fresh) this.rooms.set(room, r);
    try { return await this._join(room, r); } catch (e) {
      if (fresh && !(e instanceof ChatError && e.code === "unavailable")) this.rooms.delete(room);
      throw e;
    }
  }
  /** @param {string} room @param {any} r */
  async _join(room, r) {
    /** @type {Record<string, any>} */
    const fields = { room };
    if (r.password) fields.password = r.password;
    if (r.log.last != null) fields.since = r.log.last;
    const ack = await this.request("join", fields);
    r.joined = true;
    if (r.log.last == null) r.log.last = ack.last_seq;
    for (const m of ack.missed ?? []) this._deliver(m);
    if (ack.missed_truncated) await this._fetchGap(room, r);
    return ack;
  }
  /** @param {string} room */
  async leave(room) {
    const r = this.rooms.get(room);
    this.rooms.delete(room);
    if (r && r.joined && this.state === "open") await this.request("leave", { room });
  }
  /** The last seq held for a room (null if unknown). @param {string} room */
  lastSeq(room) { return this.rooms.get(room)?.log.last ?? null; }
  /**
   * Send a message; retried with the same client_msg_id (idempotent, §3.3)
   * when the connection drops before the ack.
   * @param {string} room @param {string} text @param {Record<string, any>} [extra]
   */
  async send(room, text, extra = {}) {
    const fields = { room, text, client_msg_id: randomId(), ...extra };
    for (let i = 0; ; i++) {
      try { return await this.request("send", fields); } catch (e) {
        if (!(e instanceof ChatError) || e.code !== "unavailable" || i >= 5 || this.state === "stopped") throw e;
        await this.ready();
      }
    }
  }
  /** @param {string} room @param {{before?: number, after?: number, limit?: number}} [q] */
  history(room, q = {}) { return this.request("history", { room, ...q }); }

  /** @param {any} ev */
  _live(ev) {
    const r = this.rooms.get(ev.room);
    if (!r) return this.emit(ev.type, ev);
    if (r.fetching) { r.queue.push(ev); return; }
    const after = r.log.gap(ev);
    if (after != null) { r.queue.push(ev); this._fetchGap(ev.room, r).catch(() => {}); return; }
    this._deliver(ev);
  }
  /** @param {any} ev */
  _deliver(ev) {
    const r = this.rooms.get(ev.room);
    if (r && !r.log.accept(ev)) return;
    this.emit(ev.type, ev);
  }
  /** Fetch everything after the last seq held, then the queued live events. @param {string} room @param {any} r */
  _fetchGap(room, r) {
    if (r.fetching) return r.fetching;
    r.fetching = (async () => {
      try {
        for (;;) {
          const h = await this.request("history", { room, after: r.log.last ?? 0, limit: 100 });
          const before = r.log.last;
          for (const m of h.messages) this._deliver({ room, type: "message", ...m });
          this.emit("gap", { room, after: before, fetched: h.messages.length });
          if (!h.has_more || !h.messages.length) break;
        }
      } finally {
        r.fetching = null;
        const q = r.queue.splice(0).sort((/** @type {any} */ a, /** @type {any} */ b) => a.seq - b.seq);
        for (const ev of q) this._deliver(ev);
      }
    })();
    return r.fetching;
  }
}
