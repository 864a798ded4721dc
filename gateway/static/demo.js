// The demo chat: a user asks for help and talks with the agent who claims it.

import { ChatterClient } from '/assets/chatter.js';
import { el, showState, toast, signIn, MessageList, refusal, newTempId } from '/assets/ui.js';

const $ = (id) => document.getElementById(id);
const ROOM_KEY = 'chatter.demo.room';
let client;
let me;
let roomId = sessionStorage.getItem(ROOM_KEY);
let list;
let agentName = 'Support';
let ended = false;
/** Every message by room: the answer to `Join` brings history before we know its room. */
const byRoom = new Map();
let rejoined = false;

const signOut = signIn('chatter.demo.token', start);
$('sign-out').addEventListener('click', () => {
  client?.close();
  sessionStorage.removeItem(ROOM_KEY);
  signOut();
});

function start(token, claims) {
  me = claims.sub;
  $('who').textContent = claims.name ?? claims.sub;
  $('sign-out').classList.remove('hidden');
  $('demo').classList.remove('hidden');
  list = new MessageList($('messages'), me);
  client = new ChatterClient({ url: location.origin, getToken: () => token });
  client.on('state', (event) => {
    showState($('status'), event);
    if (event.state === 'open' && roomId && !rejoined) {
      // After a reload: the chat's history, or that it ended meanwhile.
      rejoined = true;
      client.sendFrame('Join', { from: 'User', room_id: roomId });
    }
    if (event.state === 'unauthorized') toast('Your token was refused: sign in again.');
  });
  client.on('message', (m) => {
    const messages = byRoom.get(m.room_id) ?? [];
    messages.push(m);
    byRoom.set(m.room_id, messages);
    if (m.room_id === roomId) list.add(m, agentName);
  });
  client.on('support', onSupport);
  client.connect().catch(() => {});
  $('ask').addEventListener('click', ask);
  $('send').addEventListener('click', send);
  $('compose').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) {
      e.preventDefault();
      send();
    }
  });
  if (roomId) showChat();
}

async function ask() {
  $('ask').disabled = true;
  try {
    const answer = await client.askForHelp();
    roomId = answer.room_id;
    rejoined = true;
    sessionStorage.setItem(ROOM_KEY, roomId);
    ended = false;
    list.node.replaceChildren();
    for (const m of byRoom.get(roomId) ?? []) list.add(m, agentName);
    $('agent-name').replaceChildren(el('strong', {}, 'Support'));
    $('chat-sub').textContent = answer.request?.state === 'active' ? 'An agent is with you' : 'Waiting for an agent…';
    showChat();
  } catch (error) {
    toast(error.code === 'not_connected' ? 'Offline: try again in a moment.' : `Could not ask for help: ${error.message}`);
  } finally {
    $('ask').disabled = false;
  }
}

function showChat() {
  $('intro').classList.add('hidden');
  $('chat').classList.remove('hidden');
  $('banner').classList.add('hidden');
  $('compose').disabled = false;
  $('send').disabled = false;
  client.trackRoom(roomId);
  $('compose').focus();
}

function onSupport({ type, data }) {
  if (!data || data.room_id !== roomId) return;
  switch (type) {
    case 'SupportJoinedUser':
      agentName = data.support_name || data.support_id;
      $('agent-name').replaceChildren(el('strong', {}, agentName));
      $('chat-sub').textContent = 'is helping you';
      list.notice(`${agentName} joined the chat`);
      break;
    case 'SupportLeft':
      list.notice(`${agentName} went offline`);
      break;
    case 'ChatExpired':
      end('This chat ended after a while without messages. Ask again if you still need help.');
      break;
    case 'ChatClosed':
      end('The agent ended this chat. Ask again if you need more help.');
      break;
    default:
      break;
  }
}

function end(text) {
  if (ended) return;
  ended = true;
  $('banner').textContent = text;
  $('banner').classList.remove('hidden');
  $('compose').disabled = true;
  $('send').disabled = true;
  $('chat-sub').textContent = 'Chat ended';
  sessionStorage.removeItem(ROOM_KEY);
  const again = el('button', { class: 'primary', type: 'button', onclick: () => ask() }, 'Ask again');
  $('banner').append(' ', again);
}

function send() {
  const text = $('compose').value.trim();
  if (!text || !roomId || ended) return;
  $('compose').value = '';
  const tempId = newTempId();
  list.pending(tempId, text);
  client.send(roomId, text, { tempId }).catch((error) => {
    list.failed(tempId, refusal(error.code));
    if (error.code === 'chat_expired') end('This chat has expired. Ask again if you still need help.');
  });
}
