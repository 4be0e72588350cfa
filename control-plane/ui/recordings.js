// SSH session recordings: the list (search by host, user and time) and playback with
// asciinema's player (vendored from npm, vendor/asciinema-player/, served from the embedded
// assets). A tenant sees the sessions on its own hosts, the platform's admin sessions included;
// an admin sees every recording. The recording reaches the player as asciicast v2, which the
// server converts from tlog's format; the player draws it in its terminal, never as HTML.

import { api, authHeaders, busy, fill, h, say, scrollBox, statusLine, when } from './core.js';

const PLAYER = '/ui/vendor/asciinema-player';
let playerLoaded = null;

/** Loads the player's script and style once (they are large and only this page needs them). */
function loadPlayer() {
  if (!playerLoaded) {
    playerLoaded = new Promise((resolve, reject) => {
      document.head.append(h('link', { rel: 'stylesheet', href: `${PLAYER}/asciinema-player.css` }));
      const script = h('script', { src: `${PLAYER}/asciinema-player.min.js` });
      script.addEventListener('load', () => resolve(window.AsciinemaPlayer));
      script.addEventListener('error', () => { playerLoaded = null; reject(new Error('the player could not be loaded')); });
      document.head.append(script);
    });
  }
  return playerLoaded;
}

function duration(r) {
  if (!r.endedAt) return 'running';
  const seconds = Math.max(0, Math.round((new Date(r.endedAt) - new Date(r.startedAt)) / 1000));
  return seconds < 60 ? `${seconds} s` : `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
}

function size(bytes) {
  return bytes < 1024 ? `${bytes} B` : bytes < 1048576 ? `${(bytes / 1024).toFixed(1)} KiB` : `${(bytes / 1048576).toFixed(1)} MiB`;
}

function searchForm(admin, onSubmit) {
  const fields = [
    ...(admin ? [['tenantId', 'Tenant', 'text']] : []),
    ['hostId', 'Host', 'text'], ['user', 'User', 'text'],
    ['since', 'From', 'datetime-local'], ['until', 'Until', 'datetime-local'],
  ];
  const inputs = {};
  const form = h('form', { id: 'recordings-filters', class: 'filters', role: 'search' },
    fields.map(([name, label, type]) => {
      const id = `recordings-${name}`;
      inputs[name] = h('input', { id, name, type, placeholder: type === 'text' ? label.toLowerCase() : undefined });
      return h('label', { for: id }, label, inputs[name]);
    }),
    h('button', { type: 'submit' }, 'Search'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    for (const [name, input] of Object.entries(inputs)) {
      let value = input.value.trim();
      if (!value) continue;
      if (input.type === 'datetime-local') value = new Date(value).toISOString();
      params.set(name, value);
    }
    onSubmit(params);
  });
  return form;
}

/** The recordings page; `admin` lists every tenant's. */
export async function recordingsPage({ main, signal }, admin) {
  const base = admin ? '/api/v1/admin/recordings' : '/api/v1/tenant/infrastructure/recordings';
  const status = statusLine('recordings-status');
  const results = h('div', {});
  const stage = h('section', { id: 'playback', 'aria-labelledby': 'playback-title', hidden: true });
  const playStatus = statusLine('playback-status');
  let player = null;

  async function play(r, button) {
    await busy(button, playStatus, async () => {
      const Player = await loadPlayer();
      if (player) { player.dispose(); player = null; }
      const screen = h('div', { id: 'player', class: 'player' });
      fill(stage,
        h('h2', { id: 'playback-title' }, `Session of ${r.user} on ${r.hostId}`),
        h('p', { class: 'hint' }, `Started ${new Date(r.startedAt).toLocaleString()}`,
          r.fingerprint ? `, opened with the key ${r.fingerprint}` : '', r.certificateId ? `, certificate ${r.certificateId}` : '',
          r.truncated ? '. Truncated: the recording passed its size limit and its end was not kept.' : '.'),
        screen, playStatus);
      stage.hidden = false;
      player = Player.create(
        { url: `${base}/${r.id}/asciicast`, fetchOpts: { headers: authHeaders(), cache: 'no-store' } },
        screen, { autoPlay: true, preload: true, fit: 'width', idleTimeLimit: 2 });
      say(playStatus, '');
      stage.scrollIntoView({ block: 'nearest' });
    });
  }

  async function download(r, button) {
    await busy(button, status, async () => {
      const response = await api(`${base}/${r.id}/asciicast`, { raw: true, signal, headers: { Accept: 'application/x-asciicast' } });
      const url = URL.createObjectURL(await response.blob());
      const link = h('a', { href: url, download: `${r.id}.cast` });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    });
  }

  function row(r) {
    const playButton = h('button', { type: 'button', class: 'play', 'aria-label': `Play the session of ${r.user} on ${r.hostId}` }, 'Play');
    playButton.addEventListener('click', () => play(r, playButton));
    const saveButton = h('button', { type: 'button', class: 'secondary', 'aria-label': `Download the session of ${r.user} on ${r.hostId} (asciicast)` }, 'Download');
    saveButton.addEventListener('click', () => download(r, saveButton));
    return h('tr', { dataset: { recording: r.id } },
      h('td', {}, when(r.startedAt)), h('td', {}, duration(r)), h('td', {}, r.hostId),
      admin ? h('td', {}, r.tenantId) : null,
      h('td', {}, r.user, h('div', { class: 'hint' }, r.userKind === 'admin' ? 'platform admin' : 'tenant')),
      h('td', {}, `${r.sourceIp}:${r.sourcePort}`), h('td', { class: 'fp' }, r.fingerprint ?? r.certificateId ?? '—'),
      h('td', {}, size(r.sizeBytes), r.truncated ? h('div', { class: 'hint' }, 'truncated') : null),
      h('td', { class: 'actions' }, playButton, saveButton));
  }

  async function show(params) {
    let cursor = null;
    const body = h('tbody', {});
    const headers = ['Started', 'Length', 'Host', ...(admin ? ['Tenant'] : []), 'User', 'From', 'Key', 'Size', ''];
    const caption = admin
      ? 'Recorded SSH sessions on every host, newest first.'
      : 'Recorded SSH sessions on your servers, newest first, the platform\'s admin sessions included.';
    const more = h('button', { type: 'button', class: 'secondary', id: 'recordings-more', hidden: true }, 'Older');
    fill(results, scrollBox(caption, h('table', { id: 'recordings' },
      h('caption', {}, caption),
      h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))), body)),
    h('div', { class: 'actions' }, more));
    async function page() {
      const query = new URLSearchParams(params);
      query.set('limit', '50');
      if (cursor) query.set('cursor', cursor);
      await busy(more, status, async () => {
        const answer = await api(`${base}?${query}`, { signal });
        say(status, '');
        body.append(...answer.recordings.map(row));
        if (!body.children.length) body.append(h('tr', {}, h('td', { colspan: headers.length }, 'No recorded sessions match.')));
        cursor = answer.nextCursor ?? null;
      });
      more.hidden = cursor === null;
    }
    more.addEventListener('click', page);
    await page();
  }

  signal.addEventListener('abort', () => { if (player) player.dispose(); });
  const intro = h('p', { id: 'recording-policy-text', class: 'hint' }, admin
    ? 'Sessions are recorded on the hosts by tlog where each tenant\'s recording policy says so (the tenant\'s details on the Tenants page).'
    : 'Sessions on your servers are recorded so that you can see when and what was done there.');
  fill(main, h('h1', {}, 'Session recordings'), intro, searchForm(admin, show), status, results, stage);
  if (!admin) {
    api('/api/v1/tenant/infrastructure/recording-policy', { signal }).then((p) => {
      const who = [p.recordAdmin ? 'the platform\'s admin user' : null, p.recordTenant ? 'your own user' : null].filter(Boolean);
      intro.textContent = who.length
        ? `Recorded on your servers: the sessions of ${who.join(' and ')}, ${p.recordInput ? 'keystrokes included' : 'without keystrokes'}. The platform sets this policy.`
        : 'No sessions are recorded on your servers (the platform sets this policy).';
    }).catch(() => {});
  }
  await show(new URLSearchParams());
}
