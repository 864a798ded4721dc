// The client library against a real gateway (embedded mode, restarted for real).
// Run: node --experimental-websocket --test clients/js/test/  (Node 22+: no flag)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { ChatterClient, ChatterError } from '../chatter.js';
import { TestGateway, until } from './gateway.mjs';

let gateway;
before(async () => {
  gateway = await TestGateway.start();
});
after(async () => {
  await gateway?.close();
});

/** A client for `user` that records its events. */
async function client(user, options = {}) {
  const token = await gateway.token(user);
  const c = new ChatterClient({
    url: gateway.url,
    getToken: () => token,
    initialDelayMs: 100,
    maxDelayMs: 1000,
    connectTimeoutMs: 3000,
    ...options,
  });
  c.states = [];
  c.messages = [];
  c.on('state', (s) => c.states.push(s));
  c.on('message', (m) => c.messages.push(m));
  c.token = token;
  return c;
}

/** A room of `owner` and `others` (everyone must have been seen by the server). */
async function room(owner, others) {
  for (const c of [owner, ...others]) await gateway.api('GET', '/rooms', c.token);
  const members = others.map((c) => c.userId);
  const { status, body } = await gateway.api('POST', '/rooms', owner.token, { members });
  assert.equal(status, 201, JSON.stringify(body));
  return body.id;
}

async function pair(prefix) {
  const alice = await client(`${prefix}-alice`);
  alice.userId = `${prefix}-alice`;
  const bob = await client(`${prefix}-bob`);
  bob.userId = `${prefix}-bob`;
  const roomId = await room(alice, [bob]);
  await Promise.all([alice.connect(), bob.connect()]);
  return { alice, bob, roomId };
}

test('send() resolves on confirmation and the other member gets the message', async () => {
  const { alice, bob, roomId } = await pair('basic');
  assert.deepEqual(alice.states.map((s) => s.state), ['connecting', 'open']);
  const confirmed = [];
  alice.on('confirmed', (c) => confirmed.push(c));
  const confirmation = await alice.send(roomId, 'hello bob');
  assert.equal(typeof confirmation.message_id, 'string');
  assert.equal(confirmation.seq, 1);
  assert.equal(confirmation.room_id, roomId);
  assert.deepEqual(confirmed, [confirmation]);
  const [received] = await until('bob gets it', () => bob.messages.length && bob.messages);
  assert.equal(received.id, confirmation.message_id);
  assert.equal(received.message, 'hello bob');
  assert.equal(received.sender_id, 'basic-alice');
  assert.deepEqual(alice.pending(), []);
  alice.close();
  bob.close();
});

test('send() rejects with the reason when the server refuses', async () => {
  const { alice, bob, roomId } = await pair('refused');
  await assert.rejects(alice.send('00000000-0000-4000-8000-000000000000', 'to nowhere'), (error) => {
    assert.ok(error instanceof ChatterError);
    assert.match(error.code, /not_a_member|room_not_found/);
    return true;
  });
  await assert.rejects(alice.send(roomId, 'bad \u0000 byte'), { code: 'bad_message' });
  assert.deepEqual(alice.pending(), []);
  alice.close();
  bob.close();
});

test('a refused token stops the client: state unauthorized, no retry', async () => {
  // A JWT the gateway does not accept: /ws_token answers 401.
  const stranger = new ChatterClient({ url: gateway.url, getToken: () => 'a.b.c', initialDelayMs: 50 });
  const states = [];
  stranger.on('state', (s) => states.push(s.state));
  await assert.rejects(stranger.connect(), { code: 'not_connected' });
  assert.deepEqual(states, ['connecting', 'unauthorized']);

  // A ticket that is not one: the socket opens, then closes with 4002.
  const token = await gateway.token('ticketless');
  let attempts = 0;
  const forged = new ChatterClient({
    url: gateway.url,
    getToken: () => token,
    initialDelayMs: 50,
    fetch: async () => {
      attempts += 1;
      return new Response(JSON.stringify({ token: 'not-a-ticket' }), { status: 200 });
    },
  });
  const events = [];
  forged.on('state', (s) => events.push(s));
  // The upgrade itself succeeds (browsers cannot read a refused handshake's
  // status, so the server explains in a close code right after it).
  forged.connect().catch(() => {});
  const last = await until('refused', () => events.find((s) => s.state === 'unauthorized'));
  assert.equal(last.state, 'unauthorized');
  assert.equal(last.code, 4002);
  await new Promise((ok) => setTimeout(ok, 300));
  assert.equal(attempts, 1, 'no reconnect after 4002');
});

test('after the gateway restarts it reconnects, resumes and shows every message once', async () => {
  const { alice, bob, roomId } = await pair('restart');
  await alice.send(roomId, 'before 1');
  await alice.send(roomId, 'before 2');
  await until('bob has both', () => bob.messages.length === 2);

  await gateway.stop('SIGTERM');
  const closed = bob.states.find((s) => s.state === 'reconnecting');
  assert.ok(closed, 'bob noticed the shutdown');
  assert.ok([4007, 1006, undefined].includes(closed.code), `close code ${closed.code}`);
  await gateway.spawn();

  // Missed while bob was away: sent over REST once the gateway is back, before
  // bob's backoff ends or after; Resume or live delivery brings them either way.
  for (const text of ['while away 1', 'while away 2']) {
    const { status } = await gateway.api('POST', `/rooms/${roomId}/messages`, alice.token, { message: text });
    assert.equal(status, 201);
  }
  await until('bob reopened', () => bob.state === 'open');
  await alice.send(roomId, 'after');
  await until('bob has all five', () => bob.messages.length >= 5);
  await new Promise((ok) => setTimeout(ok, 300));
  assert.deepEqual(
    bob.messages.map((m) => m.message),
    ['before 1', 'before 2', 'while away 1', 'while away 2', 'after'],
  );
  assert.deepEqual(bob.messages.map((m) => m.seq), [1, 2, 3, 4, 5]);
  assert.ok(bob.states.some((s) => s.state === 'open' && s.resumed));
  alice.close();
  bob.close();
});

/** A WebSocket that can be told to swallow confirmations (the connection is
 * lost right after the server accepted a message) and to drop the connection. */
function lossyWebSocket() {
  const Real = globalThis.WebSocket;
  const control = { dropConfirmations: false, current: null };
  class Lossy extends Real {
    constructor(...args) {
      super(...args);
      control.current = this;
    }
    set onmessage(handler) {
      super.onmessage = (event) => {
        if (control.dropConfirmations && String(event.data).includes('"MessageSentConfirmation"')) return;
        handler(event);
      };
    }
  }
  /** The network goes away under the client (it sees a close it did not ask for). */
  control.cut = () => control.current.close(4000, 'network lost');
  return { Lossy, control };
}

async function lossyPair(prefix) {
  const { Lossy, control } = lossyWebSocket();
  const alice = await client(`${prefix}-alice`, { WebSocket: Lossy });
  alice.userId = `${prefix}-alice`;
  const bob = await client(`${prefix}-bob`);
  bob.userId = `${prefix}-bob`;
  const roomId = await room(alice, [bob]);
  await Promise.all([alice.connect(), bob.connect()]);
  return { alice, bob, roomId, control };
}

async function storedTexts(roomId, token) {
  const { body } = await gateway.api('GET', `/rooms/${roomId}/messages`, token);
  return body.messages.map((m) => m.message);
}

/** History is written a moment after confirmation ("will be stored"): wait for it. */
async function storedEventually(roomId, token, expected) {
  let texts;
  await until(`history is ${JSON.stringify(expected)}`, async () => {
    texts = await storedTexts(roomId, token);
    return texts.length >= expected.length;
  });
  assert.deepEqual(texts, expected);
}

test('after network loss unconfirmed messages are resent with their temp ids and stored once', async () => {
  const { alice, bob, roomId, control } = await lossyPair('resend');
  // Accepted by the server, but the confirmations never reach alice.
  control.dropConfirmations = true;
  const lost = [alice.send(roomId, 'one'), alice.send(roomId, 'two')];
  await until('bob has both', () => bob.messages.length === 2);
  assert.equal(alice.pending().length, 2);
  control.dropConfirmations = false;
  control.cut();

  const confirmations = await Promise.all(lost);
  assert.deepEqual(confirmations.map((c) => c.seq), [1, 2], 'the originals, not new messages');
  assert.ok(alice.states.some((s) => s.state === 'reconnecting'));
  await alice.send(roomId, 'three');
  await storedEventually(roomId, alice.token, ['one', 'two', 'three']);
  await until('bob has three', () => bob.messages.length >= 3);
  await new Promise((ok) => setTimeout(ok, 300));
  assert.deepEqual(bob.messages.map((m) => m.message), ['one', 'two', 'three']);
  assert.deepEqual(alice.messages.map((m) => m.message), ['one', 'two', 'three']);
  alice.close();
  bob.close();
});

test('messages sent while the gateway is down are sent once it is back', async () => {
  const { alice, bob, roomId } = await pair('offline');
  await alice.send(roomId, 'one');
  await until('bob has one', () => bob.messages.length === 1);
  await gateway.stop('SIGKILL');
  const offline = [alice.send(roomId, 'two'), alice.send(roomId, 'three')];
  await until('alice noticed', () => alice.state !== 'open');
  assert.equal(alice.pending().length, 2);
  await gateway.spawn();
  const confirmations = await Promise.all(offline);
  assert.deepEqual(confirmations.map((c) => c.seq), [2, 3]);
  await storedEventually(roomId, alice.token, ['one', 'two', 'three']);
  await until('bob has three', () => bob.messages.length >= 3);
  await new Promise((ok) => setTimeout(ok, 300));
  assert.deepEqual(bob.messages.map((m) => m.message), ['one', 'two', 'three']);
  alice.close();
  bob.close();
});

test(
  'a message accepted just before the gateway restarts is not stored twice',
  async () => {
    const { alice, bob, roomId, control } = await lossyPair('restart-dedupe');
    control.dropConfirmations = true;
    const lost = alice.send(roomId, 'one');
    await until('bob has it', () => bob.messages.length === 1);
    await gateway.stop('SIGTERM');
    control.dropConfirmations = false;
    await gateway.spawn();
    try {
      const confirmation = await lost;
      assert.equal(confirmation.seq, 1);
      assert.deepEqual(await storedTexts(roomId, alice.token), ['one']);
    } finally {
      alice.close();
      bob.close();
    }
  },
);

test('support desk: ask, two agents race to claim, one wins, then they chat', async () => {
  const make = async (user, roles) => {
    const token = gateway.jwt(user, roles);
    const c = new ChatterClient({ url: gateway.url, getToken: () => token, initialDelayMs: 100 });
    c.support = [];
    c.messages = [];
    c.on('support', (f) => c.support.push(f));
    c.on('message', (m) => c.messages.push(m));
    await c.connect();
    return c;
  };
  const [agent1, agent2, uma] = await Promise.all([
    make('desk-agent1', ['support']),
    make('desk-agent2', ['support']),
    make('desk-uma', []),
  ]);
  const { room_id: roomId, request } = await uma.askForHelp({ topic: 'card blocked' });
  assert.equal(request.user_id, 'desk-uma');
  for (const agent of [agent1, agent2]) {
    await until('the agent sees the request', () =>
      agent.support.some((f) => f.type === 'UserJoined' && f.data.room_id === roomId));
  }
  const outcomes = await Promise.allSettled([agent1.claim(roomId), agent2.claim(roomId)]);
  const won = outcomes.filter((o) => o.status === 'fulfilled');
  const lost = outcomes.filter((o) => o.status === 'rejected');
  assert.equal(won.length, 1, 'exactly one agent wins');
  assert.equal(lost[0].reason.code, 'already_claimed');
  const winner = outcomes[0].status === 'fulfilled' ? agent1 : agent2;
  await until('the user hears who joined', () =>
    uma.support.some((f) => f.type === 'SupportJoinedUser' && f.data.room_id === roomId));

  await uma.send(roomId, 'my card is blocked');
  await until('the agent gets it', () => winner.messages.some((m) => m.message === 'my card is blocked'));
  await winner.send(roomId, 'unblocked it');
  await until('the user gets it', () => uma.messages.some((m) => m.message === 'unblocked it'));

  for (const c of [agent1, agent2, uma]) c.close();
});

test('reconnect delays grow exponentially with jitter and are capped', async () => {
  const c = new ChatterClient({
    url: 'http://127.0.0.1:9',
    getToken: () => 'x',
    initialDelayMs: 10,
    maxDelayMs: 80,
    fetch: async () => {
      throw new Error('connection refused');
    },
  });
  const delays = [];
  c.on('state', (s) => s.state === 'reconnecting' && delays.push(s.delayMs));
  c.connect().catch(() => {});
  await until('six attempts', () => delays.length >= 6, 10000);
  c.close();
  const ceilings = [10, 20, 40, 80, 80, 80];
  delays.slice(0, 6).forEach((delay, i) => {
    assert.ok(delay >= ceilings[i] / 2 && delay <= ceilings[i], `attempt ${i + 1}: ${delay} ms`);
  });
});
