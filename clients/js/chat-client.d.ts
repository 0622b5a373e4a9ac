// Types of chat-client.js (docs/protocol.md). No build step: the module is plain JavaScript.

/** Error codes of §3.2. */
export type ErrorCode =
  | "bad_request" | "unauthorized" | "forbidden" | "not_found" | "conflict"
  | "rate_limited" | "too_large" | "unavailable" | "internal";

export declare const ERROR_CODES: readonly ErrorCode[];

export declare class ChatError extends Error {
  constructor(code: ErrorCode | string, message: string, extra?: { id?: string; status?: number; request?: string });
  readonly code: ErrorCode;
  /** the server's human-readable message */
  readonly detail: string;
  /** the request id, for an `error` frame */
  readonly id?: string;
  /** the HTTP status, for a REST error */
  readonly status?: number;
  /** the request type that was refused */
  readonly request?: string;
  /** the close code, when the socket was closed for good */
  readonly closeCode?: number;
  /** true when the request was in flight as the connection dropped */
  readonly lost?: boolean;
}

export interface User { id: string; name: string }
export interface Attachment { id: string; name: string; size: number; type: string; width?: number; height?: number }
export interface Message {
  type: "message"; room: string; msg_id: string; seq: number; prev_seq: number; sender: User;
  text?: string; ts: string; reply_to?: string; edited?: true; deleted?: true; thread?: string;
  attachments?: Attachment[]; mentions?: string[];
  reactions?: { emoji: string; count: number; me: boolean }[];
  thread_info?: { count: number; last_seq: number };
}
export interface ReactionEvent {
  type: "reaction"; room: string; msg_id: string; seq: number; prev_seq: number;
  user: User; emoji: string; on: boolean; ts: string;
}
export interface PresenceEvent { type: "presence"; room: string; event: "join" | "leave"; user: User; ts: string }
export interface TypingEvent { type: "typing"; room: string; user: User; state: "start" | "stop" }
export interface ReadEvent { type: "read"; room: string; user: User; seq: number }
export interface SystemEvent { type: "system"; room: string; text: string; ts: string }
export interface Welcome { type: "welcome"; session: string; user: User; node: string; heartbeat: number }
export interface StateEvent { state: "open" | "reconnecting"; node?: string; code?: number; reason?: string; delay?: number }
export interface GapEvent { room: string; after: number | null; fetched: number }

export interface JoinAck { room: string; members: User[]; last_seq: number; missed: Message[]; missed_truncated?: true }
export interface SendAck { msg_id: string; seq: number; ts: string }
export interface SeqAck { seq: number }
export interface HistoryAck { messages: Message[]; has_more: boolean }
export interface PresenceAck { members: User[] }

export interface TokenPair { access_token: string; refresh_token: string; expires_in: number; token_type?: string }
export interface Tokens { access: string; refresh: string; /** ms since the epoch */ expiresAt: number }

export interface ChatClientOptions {
  /** the REST origin, e.g. "http://127.0.0.1:8080" (the page's origin by default) */
  baseUrl?: string;
  /** the WebSocket URL (baseUrl with ws(s):// and /ws by default) */
  wsUrl?: string;
  /** several WebSocket URLs: each reconnect tries the next */
  wsUrls?: string[];
  /** a WebSocket implementation (globalThis.WebSocket by default) */
  WebSocket?: any;
  /** a fetch implementation (globalThis.fetch by default) */
  fetch?: (url: string, init?: any) => Promise<any>;
  /** tokens kept from an earlier login */
  tokens?: Tokens;
  /** called with each new token pair (to store it) */
  onTokens?: (tokens: Tokens) => void;
  /** backoff: first cap in ms (500) and the largest (10000); full jitter */
  backoffBase?: number;
  backoffMax?: number;
  random?: () => number;
  /** refresh this many ms before the access token expires (60000) */
  refreshMargin?: number;
  /** ms before an unanswered request fails with `unavailable` (15000) */
  requestTimeout?: number;
}

export interface EventMap {
  message: Message; reaction: ReactionEvent; presence: PresenceEvent; typing: TypingEvent;
  read: ReadEvent; system: SystemEvent; welcome: Welcome; state: StateEvent; gap: GapEvent;
  /** the client stopped for good: a close code that forbids reconnecting, or a failed refresh */
  stopped: ChatError;
  /** an `error` frame without an id */
  error: ChatError;
  tokens: Tokens;
  /** a room rejoined after a reconnect (its missed messages came as events) */
  joined: { room: string; ack: JoinAck; rejoin: true };
  rejoinFailed: { room: string; error: unknown };
}

export declare function backoffDelay(attempt: number, opts?: { base?: number; max?: number; random?: () => number }): number;
export declare function closeAction(code: number): "reconnect" | "refresh" | "stop";

export declare class RoomLog {
  constructor(memory?: number);
  last: number | null;
  static key(ev: { msg_id?: string; seq: number }): string;
  gap(ev: { seq: number; prev_seq?: number }): number | null;
  accept(ev: { msg_id?: string; seq: number }): boolean;
}

export declare class ChatClient {
  constructor(options?: ChatClientOptions);
  state: "idle" | "connecting" | "open" | "reconnecting" | "stopped";
  user: User | null;
  tokens: Tokens | null;
  on<K extends keyof EventMap>(type: K, fn: (ev: EventMap[K]) => void): () => void;
  off<K extends keyof EventMap>(type: K, fn: (ev: EventMap[K]) => void): void;
  http(method: string, path: string, body?: unknown, token?: string): Promise<any>;
  rest(method: string, path: string, body?: unknown): Promise<any>;
  register(username: string, password: string): Promise<{ user: User }>;
  login(username: string, password: string): Promise<Tokens>;
  setTokens(pair: TokenPair): void;
  refresh(): Promise<boolean>;
  logout(): Promise<void>;
  connect(): Promise<Welcome>;
  ready(): Promise<Welcome>;
  close(): void;
  request(type: "join", fields: { room: string; password?: string; since?: number }): Promise<JoinAck>;
  request(type: "send", fields: { room: string; text: string; reply_to?: string; client_msg_id?: string; thread?: string; attachments?: string[] }): Promise<SendAck>;
  request(type: "edit" | "delete" | "react", fields: Record<string, unknown>): Promise<SeqAck>;
  request(type: "history", fields: { room: string; before?: number; after?: number; limit?: number }): Promise<HistoryAck>;
  request(type: "presence", fields: { room: string }): Promise<PresenceAck>;
  request(type: string, fields?: Record<string, unknown>, opts?: { timeout?: number }): Promise<Record<string, any>>;
  join(room: string, opts?: { password?: string }): Promise<JoinAck>;
  leave(room: string): Promise<void>;
  lastSeq(room: string): number | null;
  send(room: string, text: string, extra?: Record<string, unknown>): Promise<SendAck>;
  history(room: string, q?: { before?: number; after?: number; limit?: number }): Promise<HistoryAck>;
}
