// The admin hosts page, for fleets of any size: one page of hosts at a time from
// GET /api/v1/admin/hosts, searched, filtered and sorted by the server. The hosts stream (Server-
// Sent Events) keeps it live: a change to a host on the page updates its row in place, and a
// change that may move hosts into, out of or within the page reads the page again (at most once
// a second). The page never holds more than one page of rows.

import { api, badge, fill, follow, h, Problem, say, scrollBox, statusLine, when } from './core.js';

const ADMIN = '/api/v1/admin';
/** Rows on a page. */
const PAGE = 50;
/** A pause in typing this long sends the search. */
const TYPING_PAUSE = 250;
/** Live changes read the page again at most this often. */
const REFRESH_EVERY = 1000;

function problemText(e) { return e instanceof Problem ? e.describe() : String(e); }

const count = new Intl.NumberFormat();

/** What the table says of a host's state: [text, badge kind, data-status]. */
export function hostStatus(host) {
  if (host.status === 'revoked') return ['revoked', 'bad', 'revoked'];
  if (host.status === 'pending') return ['not enrolled', 'off', 'not_enrolled'];
  if (host.status === 'degraded') return ['degraded', 'bad', 'degraded'];
  if (host.status === 'applying') return ['pending', 'warn', 'pending'];
  return ['in sync', 'ok', 'in_sync'];
}

function appliedKeys(users) {
  if (!Array.isArray(users) || users.length === 0) return '—';
  return users.map((u) => h('div', {},
    h('strong', {}, `${u.user}: `),
    u.error ? h('span', { class: 'badge bad' }, u.error)
      : (u.fingerprints || []).length ? u.fingerprints.join(', ') : 'no keys',
    (u.setAside || []).length
      ? h('div', { class: 'hint' }, `set aside (${u.setAside.length}): ${u.setAside.join(', ')}`) : null));
}

const HOST_COLUMNS = ['Host', 'Tenant', 'Agent', 'Keys', 'Applied fingerprints', 'Drift', 'Last login', 'Agent version', 'Last seen', 'Host keys'];
/** The columns the server sorts by, and its name for each. */
const SORTS = { Host: 'hostId', Tenant: 'tenantId', Keys: 'status', 'Last seen': 'lastSeen' };
/** The orders, for the sort select (the column headers' buttons do the same). */
const ORDERS = [
  ['hostId', 'Host id, A to Z'], ['-hostId', 'Host id, Z to A'],
  ['tenantId', 'Tenant, A to Z'], ['-tenantId', 'Tenant, Z to A'],
  ['status', 'Keys status, A to Z'], ['-status', 'Keys status, Z to A'],
  ['-lastSeen', 'Last seen, newest first'], ['lastSeen', 'Last seen, oldest first'],
];
/** The API's statuses, in the table's words. */
const STATUSES = ['in_sync', 'applying', 'degraded', 'pending', 'revoked'];

function hostRow(host) {
  const [text, kind, status] = hostStatus(host);
  const cell = (i, attrs, ...content) => h('td', { 'data-label': HOST_COLUMNS[i], ...attrs }, ...content);
  return h('tr', { dataset: { hostId: host.hostId, status, connected: String(host.connected) } },
    h('th', { scope: 'row' }, host.hostId),
    cell(1, {}, host.tenantId),
    cell(2, { 'data-col': 'connection' }, host.connected ? badge('connected', 'ok') : badge('offline', 'off'),
      host.agentVersion && !host.recording ? h('div', { class: 'hint', 'data-col': 'recording' }, 'does not record sessions') : null),
    cell(3, { 'data-col': 'status' }, badge(text, kind),
      host.status === 'applying' ? h('div', { class: 'hint' }, `generation ${host.appliedGeneration} of ${host.desiredGeneration}`) : null,
      host.lastError ? h('div', { class: 'hint' }, host.lastError) : null),
    cell(4, { class: 'fp' }, appliedKeys(host.users)),
    cell(5, {}, host.lastDriftAt ? [badge('repaired', 'warn'), ' ', when(host.lastDriftAt)] : 'none'),
    cell(6, {}, host.lastLogin ? [when(host.lastLogin), h('div', { class: 'hint' }, host.lastLoginUser)] : '—'),
    cell(7, {}, host.agentVersion ?? '—'),
    cell(8, {}, when(host.lastSeen)),
    cell(9, { class: 'fp' }, (host.hostKeys || []).map((k) => h('div', {}, k.fingerprint))));
}

/** Whether `host` passes the filters of `query` that can change with it (status, connected). */
function passesLive(query, host) {
  return (!query.status || host.status === query.status)
    && (!query.connected || String(host.connected) === query.connected);
}

/** Whether `host` passes the filters of `query` on its ids, which never change. */
function passesIds(query, host) {
  return (!query.tenant || host.tenantId === query.tenant)
    && (!query.q || host.hostId.includes(query.q) || host.tenantId.includes(query.q));
}

function sortField(sort) { return sort.replace(/^-/, ''); }

/** The API query of a page: limit, offset, sort and the filters that are set. */
function queryString(query) {
  const params = new URLSearchParams({ limit: String(PAGE), offset: String(query.offset), sort: query.sort });
  for (const name of ['q', 'tenant', 'status', 'connected']) {
    if (query[name]) params.set(name, query[name]);
  }
  return params.toString();
}

function labelled(id, label, control) {
  return h('label', { for: id }, label, control);
}

function select(id, name, options) {
  return h('select', { id, name }, options.map(([value, text]) => h('option', { value }, text)));
}

export async function hostsPage({ main, signal }) {
  const query = { q: '', tenant: '', status: '', connected: '', sort: 'hostId', offset: 0 };

  const live = h('span', { id: 'live', class: 'live', 'data-state': 'connecting', role: 'status' }, 'Connecting…');
  const summary = h('p', { id: 'hosts-summary' });
  const status = statusLine('hosts-status');

  const search = h('input', {
    id: 'hosts-q', name: 'q', type: 'search', maxlength: 64, autocomplete: 'off', spellcheck: 'false',
    placeholder: 'host or tenant id',
  });
  const tenant = h('input', {
    id: 'hosts-tenant', name: 'tenant', type: 'text', maxlength: 63, autocomplete: 'off', spellcheck: 'false',
    placeholder: 'tenant id',
  });
  const statusFilter = select('hosts-status-filter', 'status',
    [['', 'any'], ...STATUSES.map((s) => [s, hostStatus({ status: s })[0]])]);
  const connectedFilter = select('hosts-connected', 'connected', [['', 'any'], ['true', 'connected'], ['false', 'offline']]);
  const order = select('hosts-sort', 'sort', ORDERS);
  const filters = h('form', { id: 'hosts-filters', class: 'filters', role: 'search', 'aria-label': 'Hosts' },
    labelled('hosts-q', 'Search', search),
    labelled('hosts-tenant', 'Tenant', tenant),
    labelled('hosts-status-filter', 'Keys', statusFilter),
    labelled('hosts-connected', 'Agent', connectedFilter),
    labelled('hosts-sort', 'Order', order));

  const previous = h('button', { type: 'button', class: 'secondary', id: 'hosts-previous', disabled: true }, 'Previous page');
  const next = h('button', { type: 'button', class: 'secondary', id: 'hosts-next', disabled: true }, 'Next page');
  const range = h('span', { id: 'hosts-range', role: 'status' }, 'Loading…');
  const pager = h('div', { class: 'pager' }, previous, range, next);

  // Column headers: the sortable ones hold a button, and say their order in aria-sort.
  const sortHeads = new Map();
  const heads = HOST_COLUMNS.map((title) => {
    const field = SORTS[title];
    if (!field) return h('th', { scope: 'col' }, title);
    const arrow = h('span', { class: 'arrow', 'aria-hidden': 'true' });
    const button = h('button', { type: 'button', class: 'sort', dataset: { sort: field } }, title, arrow);
    const th = h('th', { scope: 'col' }, button);
    button.addEventListener('click', () => {
      setOrder(query.sort === field ? `-${field}` : field);
    });
    sortHeads.set(field, { th, arrow });
    return th;
  });
  const body = h('tbody', {});
  const table = h('table', { id: 'hosts', class: 'cards' },
    h('caption', {}, `Registered hosts, ${PAGE} a page, searched, filtered and sorted by the server. The rows follow the agents live: no need to reload.`),
    h('thead', {}, h('tr', {}, heads)),
    body);
  fill(main, h('h1', {}, 'Hosts'), h('p', {}, live), summary, filters, pager, status, scrollBox('Hosts', table));

  /** The rows shown, by host id, with the view each shows. */
  const rows = new Map();
  let sequence = 0;
  let inFlight = null;
  let lastLoad = 0;
  let refreshTimer = null;
  let typingTimer = null;
  let registered = null;

  function showOrder() {
    const field = sortField(query.sort);
    const descending = query.sort.startsWith('-');
    for (const [name, { th, arrow }] of sortHeads) {
      if (name === field) {
        th.setAttribute('aria-sort', descending ? 'descending' : 'ascending');
        arrow.textContent = descending ? ' ▼' : ' ▲';
      } else {
        th.removeAttribute('aria-sort');
        arrow.textContent = '';
      }
    }
    order.value = query.sort;
  }

  function show(hosts, matching) {
    rows.clear();
    const shown = hosts.map((host) => {
      const row = hostRow(host);
      rows.set(host.hostId, { row, host });
      return row;
    });
    const filtered = query.q || query.tenant || query.status || query.connected;
    const empty = registered === 0 && !filtered
      ? 'No hosts registered yet (POST /api/v1/admin/hosts registers one).'
      : 'No host matches.';
    body.replaceChildren(...(shown.length ? shown : [h('tr', {}, h('td', { colspan: HOST_COLUMNS.length }, empty))]));
    const first = hosts.length ? query.offset + 1 : 0;
    const last = query.offset + hosts.length;
    Object.assign(range.dataset, { first: String(first), last: String(last), total: String(matching) });
    range.textContent = hosts.length
      ? `${count.format(first)}–${count.format(last)} of ${count.format(matching)}`
      : `0 of ${count.format(matching)}`;
    previous.disabled = query.offset === 0;
    next.disabled = last >= matching;
  }

  /** Reads the page `query` names; an answer to an older request is dropped. */
  async function load() {
    const mine = ++sequence;
    inFlight?.abort();
    const controller = new AbortController();
    inFlight = controller;
    const stop = () => controller.abort();
    signal.addEventListener('abort', stop, { once: true });
    lastLoad = Date.now();
    table.setAttribute('aria-busy', 'true');
    try {
      const response = await api(`${ADMIN}/hosts?${queryString(query)}`, { raw: true, signal: controller.signal });
      const hosts = await response.json();
      const matching = Number(response.headers.get('X-Total-Count') ?? hosts.length);
      if (mine !== sequence) return;
      if (!hosts.length && query.offset > 0) {
        // The page is past the end now (hosts went away): show the last one.
        query.offset = Math.max(0, Math.ceil(matching / PAGE) - 1) * PAGE;
        load();
        return;
      }
      show(hosts, matching);
      say(status, '');
    } catch (e) {
      if (e.name === 'AbortError' || mine !== sequence) return;
      rows.clear();
      body.replaceChildren();
      delete range.dataset.total;
      range.textContent = '—';
      previous.disabled = true;
      next.disabled = true;
      say(status, problemText(e), 'error');
    } finally {
      signal.removeEventListener('abort', stop);
      if (mine === sequence) table.removeAttribute('aria-busy');
    }
  }

  /** Reads the page again soon: at most once per REFRESH_EVERY, however many changes ask. */
  function refreshSoon() {
    if (refreshTimer !== null) return;
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      load();
    }, Math.max(0, lastLoad + REFRESH_EVERY - Date.now()));
  }
  signal.addEventListener('abort', () => { clearTimeout(refreshTimer); clearTimeout(typingTimer); }, { once: true });

  /** Takes the filters from the form; reads the first page when they changed. */
  function applyFilters() {
    clearTimeout(typingTimer);
    typingTimer = null;
    const before = { ...query };
    query.q = search.value.trim();
    query.tenant = tenant.value.trim();
    query.status = statusFilter.value;
    query.connected = connectedFilter.value;
    if (['q', 'tenant', 'status', 'connected'].some((k) => query[k] !== before[k])) {
      query.offset = 0;
      load();
    }
  }
  function applyWhenTypingPauses() {
    clearTimeout(typingTimer);
    typingTimer = setTimeout(applyFilters, TYPING_PAUSE);
  }
  function setOrder(sort) {
    query.sort = sort;
    query.offset = 0;
    showOrder();
    load();
  }
  for (const field of [search, tenant]) {
    field.addEventListener('input', applyWhenTypingPauses);
    field.addEventListener('change', applyFilters);
  }
  statusFilter.addEventListener('change', applyFilters);
  connectedFilter.addEventListener('change', applyFilters);
  order.addEventListener('change', () => setOrder(order.value));
  filters.addEventListener('submit', (event) => { event.preventDefault(); applyFilters(); });
  previous.addEventListener('click', () => {
    query.offset = Math.max(0, query.offset - PAGE);
    load();
  });
  next.addEventListener('click', () => {
    query.offset += PAGE;
    load();
  });

  /** A delta of the hosts stream: rows on the page change in place; a change that can move hosts
   * into, out of or within the page reads it again. */
  function onDelta(event) {
    let moved = (event.removed || []).length > 0;
    if (typeof event.total === 'number' && event.total !== registered) moved = true;
    const field = sortField(query.sort);
    // Hosts change status, connection and lastSeen; ids never change.
    const orderChanges = field === 'status' || field === 'lastSeen';
    const liveFilters = Boolean(query.status || query.connected);
    for (const host of event.hosts || []) {
      const shown = rows.get(host.hostId);
      if (shown) {
        if (!passesLive(query, host) || host[field] !== shown.host[field]) moved = true;
        const row = hostRow(host);
        shown.row.replaceWith(row);
        rows.set(host.hostId, { row, host });
      } else if ((orderChanges || liveFilters) && passesIds(query, host)) {
        moved = true;
      }
    }
    return moved;
  }

  showOrder();
  load();
  await follow(`${ADMIN}/events/hosts`, {
    signal,
    onState(state, problem) {
      live.dataset.state = state;
      live.textContent = state === 'live' ? 'Live' : state === 'failed' ? `Stopped: ${problemText(problem)}` : 'Reconnecting…';
    },
    onEvent(name, data) {
      if (name !== 'snapshot' && name !== 'delta') return undefined;
      const event = JSON.parse(data);
      // A snapshot starts every connection: what changed while there was none is unknown.
      const moved = name === 'snapshot' || onDelta(event);
      if (typeof event.total === 'number') {
        registered = event.total;
        summary.dataset.total = String(registered);
        summary.textContent = `${count.format(registered)} ${registered === 1 ? 'host' : 'hosts'} registered.`;
      }
      if (moved) refreshSoon();
      return undefined;
    },
  });
}
