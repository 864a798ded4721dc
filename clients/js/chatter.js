// chatter's JavaScript client: one WebSocket that stays connected.
//
// An ES module with no dependencies and no build step: it runs as-is in browsers
// (`<script type="module">`, the gateway serves it at /assets/chatter.js) and in
// Node 20+ (pass `WebSocket` on Node 20, where it is behind --experimental-websocket;
// Node 22+ has it built in). Types are JSDoc, checked by editors and `tsc --checkJs`.
//
// What it does right once, so pages don't each get it wrong:
// - connects with a single-use ticket (`GET /ws_token`), never a JWT in the URL;
// - reconnects with exponential backoff and full jitter after network loss and
//   after the closes that ask for it (4006 server error, 4007 shutdown, 4009, 4003,
//   4013), and never after 4001/4002/4005 (the token is the problem: it says so
//   with a `state` event and stops);
// - after a reconnect sends `Resume` with the last seq of every room it knows, then
//   resends every unconfirmed message with its original `message_temp_id`, which the
//   server deduplicates, so a message is never lost nor stored twice;
// - drops messages it has already delivered (by message id), so a replay after
//   Resume or a resend never shows a message twice.

/** Close codes after which the token must be replaced: stop, say so. */
const TOKEN_CODES = new Set([4001, 4002, 4005]);
/**
 * Close codes after which reconnecting would repeat the problem or fight another
 * session (admin kick, replaced by a newer device, the client's own bad frames).
 */
const FINAL_CODES = new Set([4004, 4008, 4010, 4011, 4012, 4014]);
/** Rooms per `Resume` frame: the server's default `RESUME_MAX_ROOMS` is 100. */
const RESUME_BATCH = 100;
/** How many delivered message ids are remembered for deduplication. */
const SEEN_IDS_MAX = 10000;

/**
 * @typedef {'idle'|'connecting'|'open'|'reconnecting'|'unauthorized'|'closed'} ConnectionState
 * `idle` before `connect()`; `reconnecting` while waiting out a backoff delay;
 * `unauthorized` and `closed` are final until `connect()` is called again.
 */

/**
 * @typedef {object} StateEvent
 * @property {ConnectionState} state
 * @property {number} [code] the close code that caused it
 * @property {string} [reason] why, in words
 * @property {number} [attempt] reconnect attempt number (1 = first retry)
 * @property {number} [delayMs] how long until the next attempt
 * @property {string} [url] the gateway the socket is (or will be) connected to
 */

/**
 * @typedef {object} Message
 * @property {string} id
 * @property {string} room_id
 * @property {number} seq
 * @property {string} sender_id
 * @property {string} message
 * @property {string} created_at
 * @property {string|null} [message_temp_id]
 */

/**
 * @typedef {object} Confirmation
 * @property {string} message_id
 * @property {number} seq
 * @property {string} message_temp_id
 * @property {string} room_id
 */

/**
 * @typedef {object} ClientOptions
 * @property {string|string[]} url Base HTTP URL of a gateway (or of the load
 *   balancer), e.g. `https://chat.example.com`; several are tried in turn on
 *   reconnect. The WebSocket URL is derived from it (`/ws`).
 * @property {() => (string|Promise<string>)} getToken Returns a current user JWT.
 *   Called before every connection attempt (to get a ticket) and for REST calls,
 *   so it may refresh the token.
 * @property {typeof globalThis.WebSocket} [WebSocket] WebSocket constructor
 *   (default: the global one).
 * @property {typeof globalThis.fetch} [fetch] fetch function (default: the global one).
 * @property {number} [initialDelayMs=500] first reconnect delay (before jitter).
 * @property {number} [maxDelayMs=15000] longest reconnect delay.
 * @property {number} [connectTimeoutMs=10000] how long one attempt (ticket and
 *   handshake) and one REST call may take before it counts as failed.
 * @property {number} [heartbeatMs=25000] how often an idle connection is checked
 *   with `Ping`; no `Pong` within the same time closes it and reconnects. 0: off.
 */

/** Error of a refused send or a failed REST call. */
export class ChatterError extends Error {
  /**
   * @param {string} code machine-readable reason (`chat_expired`, `not_a_member`, `http_409`…)
   * @param {string} message
   * @param {object} [details]
   */
  constructor(code, message, details) {
    super(message);
    this.name = 'ChatterError';
    this.code = code;
    this.details = details;
  }
}

/**
 * A connection to chatter. Events (subscribe with `on(name, fn)`):
 * - `state` {@link StateEvent}: connection state changes;
 * - `message` {@link Message}: a new message (each id once, in arrival order);
 * - `confirmed` {@link Confirmation}: one of our sends was accepted;
 * - `presence` `{user_id, online, last_seen_at}`;
 * - `support` `{type, data}`: support-desk frames (`UserJoined`, `PendingUsers`,
 *   `RemoveUser`, `SupportJoinedUser`, `ChatHistory`, `ChatExpired`, `ChatClosed`,
 *   `UserLeft`, `SupportLeft`, and `Error` frames about support);
 * - `error` `{code, message, ref}`: other `Error` frames;
 * - `frame` `{type, data}`: every frame, for anything not covered above.
 */
export class ChatterClient {
  /** @param {ClientOptions} options */
  constructor(options) {
    if (!options || typeof options.getToken !== 'function') {
      throw new TypeError('ChatterClient needs options.getToken');
    }
    const urls = Array.isArray(options.url) ? options.url : [options.url];
    if (urls.length === 0 || urls.some((u) => typeof u !== 'string' || !u)) {
      throw new TypeError('ChatterClient needs options.url (a gateway base URL)');
    }
    this.urls = urls.map((u) => u.replace(/\/+$/, ''));
    this.getToken = options.getToken;
    this.WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    this.fetchImpl = options.fetch ?? globalThis.fetch?.bind(globalThis);
    if (typeof this.WebSocketImpl !== 'function') {
      throw new TypeError(
        'no WebSocket: pass options.WebSocket (Node 20: run with --experimental-websocket)',
      );
    }
    this.initialDelayMs = options.initialDelayMs ?? 500;
    this.maxDelayMs = options.maxDelayMs ?? 15000;
    this.heartbeatMs = options.heartbeatMs ?? 25000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10000;

    /** @type {ConnectionState} */
    this.state = 'idle';
    /** @type {Map<string, Set<Function>>} */
    this.listeners = new Map();
    /** Last seq seen per room: what `Resume` asks from. @type {Map<string, number>} */
    this.lastSeq = new Map();
    /** Delivered message ids, oldest first (a Set keeps insertion order). */
    this.seen = new Set();
    /**
     * Sends not yet confirmed, by temp id, in the order they were made.
     * @type {Map<string, {room_id: string, message: string, parent_id?: string,
     *   resolve: (c: Confirmation) => void, reject: (e: Error) => void, timer?: any}>}
     */
    this.outbox = new Map();
    this.socket = null;
    this.urlIndex = 0;
    this.attempt = 0;
    this.retryTimer = null;
    this.heartbeatTimer = null;
    this.awaitingPong = false;
    this.everOpened = false;
    this.wanted = false;
  }

  // ------------------------------------------------------------------ events

  /**
   * @param {'state'|'message'|'confirmed'|'presence'|'support'|'error'|'frame'} event
   * @param {(data: any) => void} fn
   * @returns {() => void} unsubscribes
   */
  on(event, fn) {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  /** @param {string} event @param {any} data */
  emit(event, data) {
    for (const fn of this.listeners.get(event) ?? []) {
      try {
        fn(data);
      } catch (error) {
        // A listener's bug must not break the connection's bookkeeping.
        console.error(`chatter: a "${event}" listener threw`, error);
      }
    }
  }

  /** @param {ConnectionState} state @param {Partial<StateEvent>} [extra] */
  setState(state, extra = {}) {
    this.state = state;
    this.emit('state', { state, ...extra });
  }

  // -------------------------------------------------------------- connection

  /**
   * Starts connecting (and keeps reconnecting until `close()`). Resolves once
   * the socket is open; rejects if the token is refused before that.
   * @returns {Promise<void>}
   */
  connect() {
    this.wanted = true;
    if (this.state === 'open') return Promise.resolve();
    const opened = new Promise((resolve, reject) => {
      const off = this.on('state', (event) => {
        if (event.state === 'open') {
          off();
          resolve();
        } else if (event.state === 'unauthorized' || event.state === 'closed') {
          off();
          reject(new ChatterError('not_connected', event.reason ?? event.state, event));
        }
      });
    });
    if (this.state !== 'connecting' && this.state !== 'reconnecting') {
      this.attempt = 0;
      this.open();
    }
    return opened;
  }

  /** Closes the connection for good; unconfirmed sends are rejected. */
  close() {
    this.wanted = false;
    clearTimeout(this.retryTimer);
    this.stopHeartbeat();
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      try {
        socket.close(1000, 'client closed');
      } catch {
        // already closing
      }
    }
    for (const [tempId, pending] of this.outbox) {
      clearTimeout(pending.timer);
      pending.reject(new ChatterError('closed', 'the client was closed before confirmation'));
      this.outbox.delete(tempId);
    }
    this.setState('closed', { reason: 'closed by the client' });
  }

  /** One connection attempt: ticket, socket, handlers. */
  async open() {
    clearTimeout(this.retryTimer);
    const base = this.urls[this.urlIndex % this.urls.length];
    this.setState('connecting', { url: base, attempt: this.attempt });
    let ticket;
    try {
      ticket = await this.ticket(base);
    } catch (error) {
      if (!this.wanted) return;
      if (error instanceof ChatterError && (error.code === 'http_401' || error.code === 'http_403')) {
        this.setState('unauthorized', { reason: error.message });
        this.wanted = false;
        return;
      }
      this.retry(undefined, `cannot get a ticket: ${error.message}`);
      return;
    }
    if (!this.wanted) return;
    const wsUrl = `${base.replace(/^http/, 'ws')}/ws?token=${encodeURIComponent(ticket)}`;
    let socket;
    try {
      socket = new this.WebSocketImpl(wsUrl);
    } catch (error) {
      this.retry(undefined, `cannot open a socket: ${error.message}`);
      return;
    }
    this.socket = socket;
    // A handshake that hangs (a packet-dropping network, a dying server) counts
    // as a failed attempt.
    const handshake = setTimeout(() => {
      if (this.socket !== socket || socket.readyState === 1) return;
      this.socket = null;
      try {
        socket.close();
      } catch {
        // ignore
      }
      this.retry(undefined, 'connection attempt timed out');
    }, this.connectTimeoutMs);
    /** Set when the server explains a close in a `Disconnection` frame. */
    let notice = null;
    socket.onopen = () => {
      clearTimeout(handshake);
      if (this.socket !== socket) return;
      this.attempt = 0;
      const resumed = this.everOpened;
      this.everOpened = true;
      // Resume first: the server holds live frames until a new socket's first
      // frame is answered, so the replay comes before them. Then listeners may
      // send theirs (`open` state).
      this.afterOpen();
      this.setState('open', { url: base, resumed });
      this.startHeartbeat(socket);
    };
    socket.onmessage = (event) => {
      if (this.socket !== socket) return;
      this.awaitingPong = false;
      let frame;
      try {
        frame = JSON.parse(typeof event.data === 'string' ? event.data : String(event.data));
      } catch {
        return;
      }
      if (frame?.type === 'Disconnection') notice = frame.data;
      this.dispatch(frame);
    };
    socket.onerror = () => {
      // Always followed by onclose, which decides what to do.
    };
    socket.onclose = (event) => {
      clearTimeout(handshake);
      if (this.socket !== socket) return;
      this.socket = null;
      this.stopHeartbeat();
      if (!this.wanted) return;
      const code = notice?.code ?? event.code;
      const reason = notice?.reason ?? event.reason ?? '';
      if (TOKEN_CODES.has(code)) {
        this.wanted = false;
        this.setState('unauthorized', { code, reason: reason || 'the token was refused' });
      } else if (FINAL_CODES.has(code)) {
        this.wanted = false;
        this.setState('closed', { code, reason: reason || 'closed by the server' });
      } else {
        this.retry(code, reason || 'connection lost');
      }
    };
  }

  /** Schedules the next attempt: exponential backoff with full jitter, next URL. */
  retry(code, reason) {
    this.attempt += 1;
    this.urlIndex += 1;
    const ceiling = Math.min(this.maxDelayMs, this.initialDelayMs * 2 ** (this.attempt - 1));
    // Full jitter: after a gateway dies, its clients spread out instead of
    // stampeding the survivors at the same instant.
    const delayMs = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this.setState('reconnecting', { code, reason, attempt: this.attempt, delayMs });
    this.retryTimer = setTimeout(() => {
      if (this.wanted) this.open();
    }, delayMs);
  }

  /** Trades the JWT for a single-use WebSocket ticket at `base`. */
  async ticket(base) {
    const token = await this.getToken();
    if (!token) throw new ChatterError('http_401', 'no token');
    const answer = await this.fetchImpl(`${base}/ws_token`, {
      headers: { authorization: `Bearer ${token}` },
      signal: AbortSignal.timeout(this.connectTimeoutMs),
    });
    const body = await answer.json().catch(() => ({}));
    if (!answer.ok) {
      throw new ChatterError(
        `http_${answer.status}`,
        body?.error?.message ?? `GET /ws_token answered ${answer.status}`,
        body,
      );
    }
    return body.token;
  }

  /** After every open: Resume the rooms we know, then resend what is unconfirmed. */
  afterOpen() {
    const rooms = [...this.lastSeq];
    for (let i = 0; i < rooms.length; i += RESUME_BATCH) {
      this.sendFrame('Resume', { rooms: Object.fromEntries(rooms.slice(i, i + RESUME_BATCH)) });
    }
    for (const [tempId, pending] of this.outbox) {
      this.transmit(tempId, pending);
    }
  }

  startHeartbeat(socket) {
    if (!this.heartbeatMs) return;
    this.awaitingPong = false;
    this.heartbeatTimer = setInterval(() => {
      if (this.socket !== socket) return;
      if (this.awaitingPong) {
        // Nothing came back within a whole interval: the network is gone even if
        // the OS has not noticed (a half-open TCP connection).
        this.socket = null;
        this.stopHeartbeat();
        try {
          socket.close(4000, 'heartbeat timeout');
        } catch {
          // ignore
        }
        this.retry(undefined, 'no answer from the server');
        return;
      }
      this.awaitingPong = true;
      this.sendFrame('Ping', {});
    }, this.heartbeatMs);
  }

  stopHeartbeat() {
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
  }

  // ---------------------------------------------------------------- incoming

  /** Routes one server frame to bookkeeping and events. */
  dispatch(frame) {
    const { type, data } = frame ?? {};
    if (typeof type !== 'string') return;
    switch (type) {
      case 'MessageReceived':
        this.deliver(data);
        break;
      case 'MessageSentConfirmation':
        this.confirm(data);
        break;
      case 'Resumed':
        this.noteSeq(data?.room_id, data?.seq);
        break;
      case 'ResyncRequired':
        if (typeof data?.room_id === 'string') this.resync(data.room_id);
        break;
      case 'PresenceChanged':
        this.emit('presence', data);
        break;
      case 'ChatHistory':
        if (typeof data?.room_id === 'string') this.trackRoom(data.room_id);
        for (const message of data?.messages ?? []) this.deliver(message);
        this.emit('support', frame);
        break;
      case 'UserJoined':
      case 'PendingUsers':
      case 'RemoveUser':
      case 'SupportJoinedUser':
      case 'ChatExpired':
      case 'ChatClosed':
      case 'UserLeft':
      case 'SupportLeft':
        if (type === 'SupportJoinedUser' && data?.room_id) this.trackRoom(data.room_id);
        this.emit('support', frame);
        break;
      case 'Error':
        if (data?.code === 'already_claimed' || data?.code === 'forbidden') {
          this.emit('support', frame);
        }
        this.emit('error', data);
        break;
      default:
        break;
    }
    this.emit('frame', frame);
  }

  /** Emits a message unless its id was already delivered. */
  deliver(message) {
    if (!message || typeof message.id !== 'string') return;
    this.noteSeq(message.room_id, message.seq);
    if (this.seen.has(message.id)) return;
    this.seen.add(message.id);
    if (this.seen.size > SEEN_IDS_MAX) {
      this.seen.delete(this.seen.values().next().value);
    }
    this.emit('message', message);
  }

  /**
   * The server cannot replay a room's gap (too large, or its recent history is
   * gone after a restart): read what we missed over REST, page by page.
   */
  async resync(roomId) {
    const limit = 200;
    try {
      for (;;) {
        const after = this.lastSeq.get(roomId) ?? 0;
        const page = await this.request(
          'GET',
          `/rooms/${encodeURIComponent(roomId)}/messages?after_seq=${after}&limit=${limit}`,
        );
        const messages = page?.messages ?? [];
        for (const message of messages) this.deliver(message);
        if (messages.length < limit) break;
      }
    } catch (error) {
      this.emit('error', { code: 'resync_failed', message: error.message, ref: roomId });
    }
  }

  noteSeq(roomId, seq) {
    if (typeof roomId !== 'string' || typeof seq !== 'number') return;
    if (seq > (this.lastSeq.get(roomId) ?? 0)) this.lastSeq.set(roomId, seq);
  }

  confirm(data) {
    const tempId = data?.message_temp_id;
    const pending = tempId && this.outbox.get(tempId);
    if (!pending) return;
    if (data.confirmed) {
      this.outbox.delete(tempId);
      clearTimeout(pending.timer);
      const confirmation = {
        message_id: data.message_id,
        seq: data.seq,
        message_temp_id: tempId,
        room_id: pending.room_id,
      };
      this.emit('confirmed', confirmation);
      pending.resolve(confirmation);
    } else if (data.reason === 'rate_limited' || data.reason === 'server_busy') {
      // Not refused, only "not now": the same temp id again later.
      clearTimeout(pending.timer);
      pending.timer = setTimeout(() => {
        if (this.outbox.has(tempId)) this.transmit(tempId, pending);
      }, Math.max(50, data.retry_after_ms ?? 1000));
    } else {
      this.outbox.delete(tempId);
      clearTimeout(pending.timer);
      pending.reject(
        new ChatterError(data.reason ?? 'refused', `message refused: ${data.reason}`, data),
      );
    }
  }

  // ---------------------------------------------------------------- outgoing

  /**
   * Sends a message. Resolves when the server confirms it (it will be stored);
   * rejects when the server refuses it (`error.code` is the reason, e.g.
   * `chat_expired`, `not_a_member`). While offline the message waits and is sent
   * (with the same temp id) once connected again.
   * @param {string} roomId
   * @param {string} text
   * @param {{tempId?: string, parentId?: string}} [options]
   * @returns {Promise<Confirmation>}
   */
  send(roomId, text, options = {}) {
    const tempId = options.tempId ?? newTempId();
    return new Promise((resolve, reject) => {
      const pending = { room_id: roomId, message: text, resolve, reject };
      if (options.parentId) pending.parent_id = options.parentId;
      this.outbox.set(tempId, pending);
      this.trackRoom(roomId);
      this.transmit(tempId, pending);
    });
  }

  /** Unconfirmed sends, oldest first: `[{tempId, room_id, message}]`. */
  pending() {
    return [...this.outbox].map(([tempId, p]) => ({
      tempId,
      room_id: p.room_id,
      message: p.message,
    }));
  }

  transmit(tempId, pending) {
    const data = { room_id: pending.room_id, message: pending.message, message_temp_id: tempId };
    if (pending.parent_id) data.parent_id = pending.parent_id;
    this.sendFrame('SendMessage', data);
  }

  /**
   * Sends any frame now if connected; returns false if not (nothing is queued:
   * only `send()` survives a reconnect).
   * @param {string} type
   * @param {object} [data]
   */
  sendFrame(type, data = {}) {
    const socket = this.socket;
    if (!socket || socket.readyState !== 1) return false;
    socket.send(JSON.stringify({ type, data }));
    return true;
  }

  /**
   * Makes a room part of `Resume` even before a message of it arrived.
   * @param {string} roomId
   * @param {number} [seq] the last seq already shown (default 0: everything)
   */
  trackRoom(roomId, seq = 0) {
    if (!this.lastSeq.has(roomId)) this.lastSeq.set(roomId, seq);
    else this.noteSeq(roomId, seq);
  }

  /** @param {string} roomId */
  typing(roomId) {
    return this.sendFrame('Typing', { room_id: roomId });
  }

  /** @param {string} roomId @param {number} seq */
  markRead(roomId, seq) {
    return this.sendFrame('MarkRead', { room_id: roomId, seq });
  }

  subscribePresence() {
    return this.sendFrame('SubscribePresence', {});
  }

  // ------------------------------------------------------------ support desk

  /**
   * A user asks for help (`Join {from: "User"}`). Resolves with
   * `{room_id, request?, messages?}`: a new request (`UserJoined`), or the
   * user's open one with its history so far (`ChatHistory`). The room is
   * tracked for `Resume` from then on.
   * @param {{topic?: string, metadata?: object}} [options]
   * @returns {Promise<{room_id: string, request?: object, messages?: Message[]}>}
   */
  askForHelp(options = {}) {
    return this.waitFor(
      () => this.sendFrame('Join', { from: 'User', ...options }),
      (frame) => {
        if (frame.type === 'UserJoined') return { room_id: frame.data.room_id, request: frame.data };
        if (frame.type === 'ChatHistory') return { room_id: frame.data.room_id, messages: frame.data.messages };
        return undefined;
      },
      (frame) =>
        frame.type === 'Error' && !frame.data?.ref
          ? new ChatterError(frame.data?.code ?? 'error', frame.data?.message ?? 'refused', frame.data)
          : undefined,
    ).then((answer) => {
      this.trackRoom(answer.room_id);
      return answer;
    });
  }

  /** A dashboard asks for the queue (`Load`); the answer is a `PendingUsers` support event. */
  loadQueue() {
    return this.sendFrame('Load', {});
  }

  /**
   * An agent claims a waiting user (`JoinUser {room_id}`). Resolves with the
   * chat's history (`ChatHistory`: this agent won, its socket is in the room);
   * rejects with a {@link ChatterError} whose code is `already_claimed` (another
   * agent was first), `chat_expired`, `chat_closed`, `request_not_found` or
   * `forbidden`.
   * @param {string} roomId
   * @returns {Promise<{room_id: string, messages: Message[]}>}
   */
  claim(roomId) {
    return this.waitFor(
      () => this.sendFrame('JoinUser', { room_id: roomId }),
      (frame) => (frame.type === 'ChatHistory' && frame.data?.room_id === roomId ? frame.data : undefined),
      (frame) =>
        frame.type === 'Error' && frame.data?.ref === roomId
          ? new ChatterError(frame.data.code, frame.data.message ?? frame.data.code, frame.data)
          : undefined,
    ).then((answer) => {
      this.trackRoom(roomId);
      return answer;
    });
  }

  /**
   * Sends a frame with `send` and settles on the first frame that `win` maps
   * to a value (resolve) or `lose` maps to an error (reject); rejects when not
   * connected or when nothing came within `connectTimeoutMs`.
   */
  waitFor(send, win, lose) {
    return new Promise((resolve, reject) => {
      let timer;
      const off = this.on('frame', (frame) => {
        const value = win(frame);
        const error = value === undefined ? lose(frame) : undefined;
        if (value === undefined && error === undefined) return;
        off();
        clearTimeout(timer);
        if (error !== undefined) reject(error);
        else resolve(value);
      });
      if (!send()) {
        off();
        reject(new ChatterError('not_connected', 'not connected'));
        return;
      }
      timer = setTimeout(() => {
        off();
        reject(new ChatterError('timeout', 'no answer from the server'));
      }, this.connectTimeoutMs);
    });
  }

  /** @param {string} roomId */
  closeChat(roomId) {
    return this.request('POST', `/support/requests/${encodeURIComponent(roomId)}/close`, {});
  }

  /**
   * A REST call to the gateway with the current JWT. Resolves with the JSON body
   * (or null); rejects with a {@link ChatterError} whose code is the body's error
   * code, or `http_<status>`.
   * @param {string} method
   * @param {string} path starting with `/`
   * @param {object} [body]
   */
  async request(method, path, body) {
    const token = await this.getToken();
    const base = this.urls[this.urlIndex % this.urls.length];
    /** @type {Record<string, string>} */
    const headers = { authorization: `Bearer ${token}` };
    const init = { method, headers, signal: AbortSignal.timeout(this.connectTimeoutMs) };
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const answer = await this.fetchImpl(`${base}${path}`, init);
    const text = await answer.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = text;
    }
    if (!answer.ok) {
      const error = json?.error;
      const failure = new ChatterError(
        error?.code ?? `http_${answer.status}`,
        error?.message ?? `${method} ${path} answered ${answer.status}`,
        json,
      );
      failure.status = answer.status;
      throw failure;
    }
    return json;
  }
}

/** A temp id unique enough to never collide with this user's other sends. */
function newTempId() {
  const crypto = globalThis.crypto;
  if (crypto?.randomUUID) return crypto.randomUUID();
  return `t${Date.now().toString(36)}${Math.random().toString(36).slice(2)}`;
}
