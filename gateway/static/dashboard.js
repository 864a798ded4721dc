// The support dashboard: the live queue, claiming, several chats in tabs,
// presence and expiry, on top of the client library.

import { ChatterClient } from '/assets/chatter.js';
import { el, duration, showState, toast, signIn, MessageList, refusal, newTempId } from '/assets/ui.js';

const $ = (id) => document.getElementById(id);
/** Waiting requests by room id: `{user_id, username, room_id, since}` (since: local ms). */
const queue = new Map();
/** Open chats by room id. */
const chats = new Map();
/** Messages of rooms that have no tab yet (a claim's history arrives before its tab opens). */
const early = new Map();
/** Last known presence by user id. */
const online = new Map();
let client;
let me;
let active = null;

const signOut = signIn('chatter.dashboard.token', start);
$('sign-out').addEventListener('click', () => {
  client?.close();
  signOut();
});

function start(token, claims) {
  me = claims.sub;
  $('who').textContent = claims.name ?? claims.sub;
  $('sign-out').classList.remove('hidden');
  $('desk').classList.remove('hidden');
  client = new ChatterClient({ url: location.origin, getToken: () => token });
  client.on('state', (event) => {
    showState($('status'), event);
    if (event.state === 'open') {
      // After every (re)connect: the queue may have changed while we were away.
      client.loadQueue();
      client.subscribePresence();
      loadAgents();
      // Re-join the chats open in tabs: history, or that they ended meanwhile.
      for (const chat of chats.values()) {
        if (!chat.ended) client.sendFrame('Join', { from: 'Support', room_id: chat.room_id });
      }
    }
    if (event.state === 'unauthorized') toast('Your token was refused: sign in again.');
  });
  client.on('support', onSupport);
  client.on('message', onMessage);
  client.on('presence', (p) => {
    online.set(p.user_id, p.online);
    renderPresence();
  });
  client.on('error', (error) => {
    // Errors about a room answer something we did (a claim, a re-join).
    if (!error.ref) toast(error.message ?? error.code);
  });
  client.connect().catch(() => {});
  restoreChats();
  setInterval(renderQueue, 1000);
  setInterval(loadAgents, 15000);
}

// ------------------------------------------------------------------ queue

function onSupport({ type, data }) {
  switch (type) {
    case 'PendingUsers':
      queue.clear();
      for (const r of data.requests ?? []) addRequest(r);
      break;
    case 'UserJoined':
      addRequest(data);
      break;
    case 'RemoveUser':
      queue.delete(data.room_id);
      refreshAgentsSoon();
      break;
    case 'Error':
      if (data.code === 'already_claimed') queue.delete(data.ref);
      break;
    case 'ChatExpired':
      queue.delete(data.room_id);
      refreshAgentsSoon();
      endChat(data.room_id, 'expired', 'This chat expired: no messages for a while. The user can ask again.');
      break;
    case 'ChatClosed':
      queue.delete(data.room_id);
      refreshAgentsSoon();
      endChat(data.room_id, 'closed', 'This chat was closed.');
      break;
    case 'UserLeft': {
      const chat = chats.get(data.room_id);
      if (chat) {
        chat.list.notice(`${chat.username} went offline`);
        online.set(data.user_id, false);
      }
      break;
    }
    case 'SupportLeft': {
      const chat = chats.get(data.room_id);
      if (chat && data.user_id !== me) chat.list.notice('The other agent left');
      break;
    }
    default:
      break;
  }
  renderQueue();
  renderPresence();
}

function addRequest(r) {
  if (chats.has(r.room_id)) return;
  const waited = r.waiting_secs ?? (Date.now() - Date.parse(r.created_at)) / 1000;
  queue.set(r.room_id, {
    user_id: r.user_id,
    username: r.username || r.user_id,
    room_id: r.room_id,
    since: Date.now() - Math.max(0, waited || 0) * 1000,
  });
}

function renderQueue() {
  const list = $('queue');
  const entries = [...queue.values()].sort((a, b) => a.since - b.since);
  $('queue-count').textContent = String(entries.length);
  $('queue-empty').classList.toggle('hidden', entries.length > 0);
  const seen = new Set();
  for (const r of entries) {
    seen.add(r.room_id);
    let item = list.querySelector(`li[data-room="${r.room_id}"]`);
    if (!item) {
      item = el('li', { dataset: { room: r.room_id, user: r.user_id } },
        el('span', { class: 'dot' }),
        el('div', { class: 'grow' }, el('div', { class: 'name' }, r.username), el('div', { class: 'meta' })),
        el('button', { class: 'primary claim', type: 'button', onclick: () => claim(r.room_id) }, 'Claim'));
    }
    list.append(item); // keeps oldest first
    const secs = (Date.now() - r.since) / 1000;
    item.querySelector('.meta').textContent = `waiting ${duration(secs)}`;
    item.classList.toggle('waiting-long', secs > 60);
  }
  for (const item of [...list.children]) {
    if (!seen.has(item.dataset.room)) item.remove();
  }
}

async function claim(roomId) {
  const request = queue.get(roomId);
  const button = $('queue').querySelector(`li[data-room="${roomId}"] button`);
  if (button) button.disabled = true;
  try {
    await client.claim(roomId);
    queue.delete(roomId);
    renderQueue();
    openChat({ room_id: roomId, user_id: request?.user_id, username: request?.username }, true);
  } catch (error) {
    const gone = {
      already_claimed: 'Another agent already took that chat.',
      chat_expired: 'That request expired.',
      chat_closed: 'That request was closed.',
      request_not_found: 'That request is gone.',
    }[error.code];
    if (gone) {
      queue.delete(roomId);
      renderQueue();
      toast(gone);
    } else {
      toast(`Could not claim: ${error.message}`);
      if (button) button.disabled = false;
    }
  }
}

// ------------------------------------------------------------------ chats

function openChat({ room_id, user_id, username }, select) {
  let chat = chats.get(room_id);
  if (!chat) {
    const messages = el('div', { class: 'messages', 'aria-live': 'polite' });
    const banner = el('div', { class: 'banner hidden' });
    const input = el('textarea', { class: 'compose', placeholder: 'Reply…', 'aria-label': 'Reply' });
    const sendButton = el('button', { class: 'primary send', type: 'button' }, 'Send');
    const closeButton = el('button', { class: 'close-chat', type: 'button' }, 'End chat');
    const pane = el('div', { class: 'chat hidden', dataset: { room: room_id } },
      el('div', { class: 'chat-head' },
        el('span', { class: 'dot', dataset: { user: user_id ?? '' } }),
        el('div', { class: 'grow' }, el('strong', {}, username ?? user_id ?? 'User'),
          user_id && username && username !== user_id ? el('div', { class: 'sub' }, user_id) : null),
        closeButton),
      messages, banner,
      el('div', { class: 'composer' }, input, sendButton));
    const tab = el('button', { type: 'button', dataset: { room: room_id }, onclick: () => select_(room_id) },
      el('span', { class: 'dot', dataset: { user: user_id ?? '' } }),
      el('span', { class: 'label' }, username ?? user_id ?? 'User'),
      el('span', { class: 'badge hidden' }, '0'));
    chat = { room_id, user_id, username: username ?? user_id, pane, tab, banner, input, unread: 0, ended: null,
      list: new MessageList(messages, me) };
    chats.set(room_id, chat);
    $('chats').append(pane);
    $('tabs').append(tab);
    const send = () => sendIn(chat);
    sendButton.addEventListener('click', send);
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey) {
        e.preventDefault();
        send();
      }
    });
    closeButton.addEventListener('click', async () => {
      try {
        await client.closeChat(room_id);
        endChat(room_id, 'closed', 'You ended this chat.');
      } catch (error) {
        toast(`Could not end the chat: ${error.message}`);
      }
    });
    for (const m of early.get(room_id) ?? []) chat.list.add(m, chat.username);
    early.delete(room_id);
    client.trackRoom(room_id);
    client.resync(room_id); // anything newer than what it has
  }
  $('no-chat').classList.add('hidden');
  if (select || !active) select_(room_id);
  renderPresence();
  return chat;
}

function select_(roomId) {
  active = roomId;
  for (const chat of chats.values()) {
    const on = chat.room_id === roomId;
    chat.pane.classList.toggle('hidden', !on);
    chat.tab.classList.toggle('active', on);
    if (on) {
      chat.unread = 0;
      renderBadge(chat);
      chat.list.scroll();
      chat.input.focus();
    }
  }
}

function renderBadge(chat) {
  const badge = chat.tab.querySelector('.badge');
  badge.textContent = String(chat.unread);
  badge.classList.toggle('hidden', chat.unread === 0);
}

function onMessage(m) {
  const chat = chats.get(m.room_id);
  if (!chat) {
    const list = early.get(m.room_id) ?? [];
    if (list.length < 500) list.push(m);
    early.set(m.room_id, list);
    return;
  }
  chat.list.add(m, chat.username);
  if (m.sender_id !== me && active !== m.room_id) {
    chat.unread += 1;
    renderBadge(chat);
  }
}

function sendIn(chat) {
  const text = chat.input.value.trim();
  if (!text || chat.ended) return;
  chat.input.value = '';
  const tempId = newTempId();
  chat.list.pending(tempId, text);
  client.send(chat.room_id, text, { tempId }).catch((error) => {
    chat.list.failed(tempId, refusal(error.code));
    if (error.code === 'chat_expired') endChat(chat.room_id, 'expired', 'This chat expired.');
  });
}

function endChat(roomId, how, text) {
  const chat = chats.get(roomId);
  if (!chat || chat.ended) return;
  chat.ended = how;
  chat.banner.textContent = text;
  chat.banner.classList.remove('hidden');
  chat.banner.dataset.ended = how;
  chat.input.disabled = true;
  chat.pane.querySelector('.send').disabled = true;
  chat.pane.querySelector('.close-chat').disabled = true;
  chat.tab.querySelector('.label').classList.add('ended');
}

/** Chats this agent already has (after a reload): its support rooms. */
async function restoreChats() {
  try {
    const { rooms } = await client.request('GET', '/rooms?limit=50');
    for (const room of rooms ?? []) {
      if (room.kind !== 'support') continue;
      if (!room.members?.includes(me) || room.members.length < 2) continue;
      const user = room.members.find((m) => m !== me) ?? room.owner_id;
      openChat({ room_id: room.id, user_id: user, username: user }, false);
      // Expired or closed meanwhile: the re-join answers ChatExpired / ChatClosed.
      client.sendFrame('Join', { from: 'Support', room_id: room.id });
    }
  } catch {
    // The dashboard works without: new claims open tabs anyway.
  }
}

// ------------------------------------------------------------- presence

let agentsTimer;
/** Active chat counts change with claims and endings: refresh shortly after. */
function refreshAgentsSoon() {
  clearTimeout(agentsTimer);
  agentsTimer = setTimeout(loadAgents, 500);
}

async function loadAgents() {
  if (!client) return;
  try {
    const answer = await client.request('GET', '/support/agents');
    const agents = Array.isArray(answer) ? answer : (answer?.agents ?? []);
    const list = $('agents');
    list.replaceChildren(...agents.map((a) => {
      online.set(a.user_id, Boolean(a.online));
      const chatsText = `${a.active_chats ?? 0} active chat${a.active_chats === 1 ? '' : 's'}`;
      return el('li', { dataset: { user: a.user_id } },
        el('span', { class: 'dot', dataset: { user: a.user_id } }),
        el('div', { class: 'grow' },
          el('div', { class: 'name' }, (a.name || a.username || a.user_id) + (a.user_id === me ? ' (you)' : '')),
          el('div', { class: 'meta' }, a.online ? chatsText : 'offline')));
    }));
    $('agents-empty').classList.toggle('hidden', agents.length > 0);
    renderPresence();
  } catch {
    // Shown again on the next refresh.
  }
}

function renderPresence() {
  for (const dot of document.querySelectorAll('.dot[data-user]')) {
    dot.classList.toggle('online', online.get(dot.dataset.user) === true);
  }
  for (const item of $('queue').children) {
    item.querySelector('.dot').classList.toggle('online', online.get(item.dataset.user) !== false);
  }
}
