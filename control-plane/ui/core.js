// keyward's page toolkit: the session, API calls, problem documents, DOM building and a
// Server-Sent Events reader that can send the Authorization header (EventSource cannot).
// A session is either a pasted API token (sent as Authorization) or, after signing in with the
// identity provider, the server's HttpOnly cookie: the page then holds only the session's CSRF
// token, which it sends as X-CSRF-Token with every call.
// Every value from the server reaches the page through textContent or an attribute, never as HTML.

const TOKEN = 'keyward.token';
const ROLE = 'keyward.role';
const TENANT = 'keyward.tenant';
const CSRF = 'keyward.csrf';
const NAME = 'keyward.name';

export const session = {
  get token() { return sessionStorage.getItem(TOKEN); },
  get role() { return sessionStorage.getItem(ROLE); },
  get tenant() { return sessionStorage.getItem(TENANT); },
  /** The CSRF token of a cookie session (signed in with the identity provider). */
  get csrf() { return sessionStorage.getItem(CSRF); },
  /** Who signed in with the identity provider. */
  get name() { return sessionStorage.getItem(NAME); },
  get signedIn() { return Boolean(this.token || this.csrf); },
  set(token, who) {
    this.clear();
    sessionStorage.setItem(TOKEN, token);
    this.setRole(who);
  },
  /** A cookie session, from GET /api/v1/session. */
  setCookie(me) {
    this.clear();
    sessionStorage.setItem(CSRF, me.csrfToken);
    sessionStorage.setItem(NAME, me.displayName);
    this.setRole(me);
  },
  setRole(who) {
    sessionStorage.setItem(ROLE, who.role);
    if (who.tenantId) sessionStorage.setItem(TENANT, who.tenantId);
    else sessionStorage.removeItem(TENANT);
  },
  clear() {
    for (const key of [TOKEN, ROLE, TENANT, CSRF, NAME]) sessionStorage.removeItem(key);
  },
};

/** A problem document (RFC 9457) or a failure to reach the server. */
export class Problem extends Error {
  constructor(status, code, title, detail) {
    super(detail || title || code);
    this.status = status;
    this.code = code;
    this.title = title;
  }
  /** One sentence for a person. */
  describe() {
    if (this.status === 0) return 'The keyward server cannot be reached. Check your connection and try again.';
    return this.title && this.message !== this.title ? `${this.title}: ${this.message}` : this.message;
  }
}

let onSignedOut = () => {};
/** Where an expired or revoked token sends the user. */
export function whenSignedOut(callback) { onSignedOut = callback; }

export function authHeaders(extra = {}, token = session.token) {
  if (!token && session.csrf) return { 'X-CSRF-Token': session.csrf, ...extra };
  return { Authorization: `Bearer ${token}`, ...extra };
}

async function problemOf(response) {
  let body = {};
  try { body = await response.json(); } catch { /* not a problem document */ }
  return new Problem(response.status, body.code || `http_${response.status}`,
    body.title || response.statusText, body.detail);
}

/** The 401s that ask for a second factor: the token is fine, the session goes on. */
export const STEP_UP_CODES = ['mfa_required', 'mfa_invalid', 'mfa_replayed'];

/**
 * Calls the API; resolves to the JSON answer (or the Response when `raw`), rejects with a
 * Problem. A 401 ends the session, unless it asks for a second factor (`STEP_UP_CODES`).
 */
export async function api(path, { method = 'GET', body, raw = false, token, signal, headers: extra = {} } = {}) {
  const headers = authHeaders({ Accept: 'application/json', ...extra }, token || session.token);
  const init = { method, headers, cache: 'no-store', credentials: 'same-origin', signal };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new Problem(0, 'unreachable', 'Cannot reach the server', String(e.message || e));
  }
  if (!response.ok) {
    const problem = await problemOf(response);
    if (response.status === 401 && !token && !STEP_UP_CODES.includes(problem.code)) onSignedOut('Your session ended (the token was revoked or is no longer valid). Sign in again.');
    throw problem;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

/**
 * Follows a text/event-stream: calls onEvent(name, data) per event, reconnects with backoff
 * after a failure (onState('live' | 'retrying')), stops when `signal` aborts or when onEvent
 * returns 'stop'.
 */
export async function follow(path, { signal, onEvent, onState = () => {} }) {
  let delay = 1000;
  while (!signal.aborted) {
    try {
      const response = await fetch(path, {
        headers: authHeaders({ Accept: 'text/event-stream' }), cache: 'no-store',
        credentials: 'same-origin', signal,
      });
      if (response.status === 401) { onSignedOut('Your session ended. Sign in again.'); return; }
      if (!response.ok) throw await problemOf(response);
      onState('live');
      delay = 1000;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, '\n');
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let name = 'message';
          const data = [];
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) continue;
            const colon = line.indexOf(':');
            const field = colon < 0 ? line : line.slice(0, colon);
            const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
            if (field === 'event') name = text;
            else if (field === 'data') data.push(text);
          }
          if (data.length && onEvent(name, data.join('\n')) === 'stop') return;
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof Problem && e.status >= 400 && e.status < 500) { onState('failed', e); return; }
    }
    onState('retrying');
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, delay);
      signal.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
    });
    delay = Math.min(delay * 2, 30000);
  }
}

/** h('p', { class: 'x' }, 'text', child): an element; strings become text nodes. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces an element's content. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A definition list of [label, value] pairs (value: text or node; null shows a dash). */
export function facts(pairs, attrs = {}) {
  return h('dl', { class: 'facts', ...attrs },
    pairs.map(([label, value, id]) => [h('dt', {}, label), h('dd', { id }, value ?? '—')]));
}

/**
 * The scrolling box around a wide table: focusable, so keyboard users can scroll it too, and
 * named for screen readers.
 */
export function scrollBox(label, content) {
  return h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': label }, content);
}

/** A table with a caption and headers; rows are arrays of cells (text or td elements). */
export function table(caption, headers, rows, attrs = {}) {
  return scrollBox(caption,
    h('table', attrs,
      h('caption', {}, caption),
      h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows)));
}

export function badge(text, kind) { return h('span', { class: `badge ${kind}` }, text); }

/** A time from the API as the reader's local date and time, with the exact value on hover. */
export function when(iso) {
  if (!iso) return '—';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return h('time', { datetime: iso, title: iso }, date.toLocaleString());
}

/** An aria-live status line; say(el, text, kind) updates it. */
export function statusLine(id) {
  return h('p', { id, class: 'status', role: 'status', 'aria-live': 'polite' });
}

export function say(el, text, kind = 'ok') {
  el.className = text ? `status notice ${kind}` : 'status';
  el.textContent = text || '';
}

/**
 * Asks for confirmation in the page's <dialog>; resolves to true when confirmed. The dialog
 * is modal: keyboard focus stays in it and Escape cancels.
 */
export function confirmAction({ title, text, ok }) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = ok;
  dialog.returnValue = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.showModal();
    document.getElementById('confirm-cancel').focus();
  });
}

/** Runs `work` with the button disabled, reporting a Problem in `status`. */
export async function busy(button, status, work) {
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  try {
    return await work();
  } catch (e) {
    if (e.name !== 'AbortError') say(status, e instanceof Problem ? e.describe() : String(e), 'error');
    return undefined;
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
  }
}
