// Small helpers shared by the dashboard and the demo page.

/** Creates an element: el('li', {class: 'x', dataset: {room: id}}, 'text', child). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** The claims of a JWT (not verified: only to show who is signed in). */
export function claimsOf(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(decodeURIComponent(escape(atob(part))));
  } catch {
    return null;
  }
}

/** "45 s", "3 min 05 s", "1 h 12 min". */
export function duration(secs) {
  const s = Math.max(0, Math.floor(secs));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function clock(iso) {
  const date = iso ? new Date(iso) : new Date();
  return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

/** Shows the connection state in the header pill. */
export function showState(pill, event) {
  const labels = {
    idle: 'Not connected',
    connecting: 'Connecting…',
    open: 'Online',
    reconnecting: `Offline — reconnecting in ${Math.ceil((event.delayMs ?? 0) / 1000)} s`,
    unauthorized: 'Signed out — token refused',
    closed: 'Disconnected',
  };
  pill.dataset.state = event.state;
  pill.textContent = labels[event.state] ?? event.state;
  pill.title = event.reason ?? '';
}

let toastTimer;
export function toast(text) {
  const node = document.getElementById('toast');
  node.textContent = text;
  node.classList.remove('hidden');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => node.classList.add('hidden'), 4000);
}

/**
 * The sign-in box: a pasted token, or (development) one minted with the
 * service secret. Resolves with the token; remembers it for this tab.
 */
export function signIn(storageKey, onToken) {
  const form = document.getElementById('signin');
  const area = document.getElementById('token');
  const error = document.getElementById('signin-error');
  const fromHash = new URLSearchParams(location.hash.slice(1)).get('token');
  if (fromHash) history.replaceState(null, '', location.pathname);
  const saved = fromHash ?? sessionStorage.getItem(storageKey);
  const accept = (token) => {
    const claims = claimsOf(token);
    if (!claims?.sub) {
      error.textContent = 'That is not a chatter token (a JWT with a user id).';
      return;
    }
    sessionStorage.setItem(storageKey, token);
    form.classList.add('hidden');
    onToken(token, claims);
  };
  document.getElementById('sign-in').addEventListener('click', () => accept(area.value.trim()));
  document.getElementById('mint').addEventListener('click', async () => {
    const userId = document.getElementById('mint-user').value.trim();
    const secret = document.getElementById('mint-secret').value;
    error.textContent = '';
    try {
      const answer = await fetch('/tokens', {
        method: 'POST',
        headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
        body: JSON.stringify({ user_id: userId, name: userId }),
      });
      const body = await answer.json();
      if (!answer.ok) throw new Error(body?.error?.message ?? `answered ${answer.status}`);
      area.value = body.token;
      accept(body.token);
    } catch (e) {
      error.textContent = `Could not get a token: ${e.message}`;
    }
  });
  if (saved) accept(saved);
  else form.classList.remove('hidden');
  return () => {
    sessionStorage.removeItem(storageKey);
    location.reload();
  };
}

/**
 * One conversation's message list: messages in seq order, each once (the client
 * library already drops repeats by id), our own unconfirmed ones shown faded
 * until they are confirmed.
 */
export class MessageList {
  constructor(node, me) {
    this.node = node;
    this.me = me;
  }

  /** @param {{id, seq, sender_id, message, created_at, message_temp_id}} m */
  add(m, senderName) {
    if (this.node.querySelector(`[data-id="${CSS.escape(m.id)}"]`)) return;
    if (m.message_temp_id) {
      this.node.querySelector(`[data-temp="${CSS.escape(m.message_temp_id)}"]`)?.remove();
    }
    const mine = m.sender_id === this.me;
    const item = el(
      'div',
      { class: mine ? 'msg mine' : 'msg', dataset: { id: m.id, seq: String(m.seq) } },
      el('div', { class: 'text' }, m.message),
      el('div', { class: 'time' }, mine ? clock(m.created_at) : `${senderName ?? m.sender_id} · ${clock(m.created_at)}`),
    );
    // Usually the newest: walk back from the end to the first lower seq.
    let after = this.node.lastElementChild;
    while (after && (after.dataset.temp || (after.dataset.seq && Number(after.dataset.seq) > m.seq))) {
      after = after.previousElementSibling;
    }
    if (after) after.after(item);
    else this.node.prepend(item);
    this.scroll();
  }

  pending(tempId, text) {
    this.node.append(
      el('div', { class: 'msg mine pending', dataset: { temp: tempId } },
        el('div', { class: 'text' }, text),
        el('div', { class: 'time' }, 'Sending…')),
    );
    this.scroll();
  }

  failed(tempId, reason) {
    const item = this.node.querySelector(`[data-temp="${CSS.escape(tempId)}"] .time`);
    if (item) item.textContent = `Not sent: ${reason}`;
  }

  notice(text) {
    this.node.append(el('div', { class: 'notice' }, text));
    this.scroll();
  }

  scroll() {
    this.node.scrollTop = this.node.scrollHeight;
  }
}

/** Why a send was refused, in words. */
export function refusal(code) {
  return {
    chat_expired: 'the chat has expired',
    chat_closed: 'the chat was closed',
    not_a_member: 'you are not in this chat',
    rate_limited: 'too fast, slow down',
    message_too_long: 'the message is too long',
  }[code] ?? code;
}

export function newTempId() {
  return crypto.randomUUID();
}
