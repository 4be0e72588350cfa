// The admin pages: live hosts (hosts.js), tenants and their secrets' metadata, the audit log, logins,
// Vault health, bulk rotation and the admin token's second factors.

import {
  api, badge, busy, confirmAction, facts, fill, follow, h, Problem, say, scrollBox, statusLine, table, when,
} from './core.js';
import { hostsPage } from './hosts.js';
import { mfaSection, withStepUp } from './mfa.js';
import { certificatesPanel } from './certs.js';
import { evidence, outcome } from './tenant.js';

const ADMIN = '/api/v1/admin';

function problemText(e) { return e instanceof Problem ? e.describe() : String(e); }

async function load(container, path, signal) {
  try {
    return await api(path, { signal });
  } catch (e) {
    if (e.name !== 'AbortError') container.append(h('p', { class: 'notice error', role: 'alert' }, problemText(e)));
    return null;
  }
}

// ---- Tenants -----------------------------------------------------------------------------

function keySet(k) {
  const registered = k.origin === 'registered';
  return [
    h('div', {}, badge(k.status, k.status === 'active' ? 'ok' : 'bad'),
      registered ? ` registered ${k.keyType}, generation ${k.generation}` : ` ${k.algorithm}, generation ${k.generation}`,
      k.rotationOverdue ? [' ', badge('overdue', 'warn')] : null),
    h('div', { class: 'mono' }, k.fingerprint),
    h('div', { class: 'hint' }, 'rotated ', when(k.lastRotated), ', next ', when(k.nextRotation)),
    h('div', { class: 'hint' }, registered
      ? 'its owner holds the private key'
      : (k.downloadedAt ? ['downloaded ', when(k.downloadedAt)] : 'not downloaded')),
  ];
}

// The admin user's own public key for a tenant, in place of the generated one (and, once one is
// registered, the way back to a key keyward generates).
function adminKeyForm(tenantId, registered, signal, reload) {
  const status = statusLine('admin-key-status');
  const field = h('textarea', {
    id: 'admin-public-key', name: 'publicKey', rows: 3, maxlength: 8192, required: true,
    spellcheck: 'false', autocomplete: 'off', 'aria-describedby': 'admin-public-key-hint',
  });
  const button = h('button', { type: 'submit', id: 'register-admin-key' }, 'Register admin key');
  const form = h('form', { id: 'admin-key-form', class: 'stack', novalidate: true },
    h('label', { for: 'admin-public-key' }, 'Admin user\'s public key', field),
    h('p', { id: 'admin-public-key-hint', class: 'hint' },
      'One line of a .pub file: Ed25519, ECDSA, RSA of at least 3072 bits, or a FIDO2 security key. ',
      'keyward then holds no private key for the admin user of this tenant and does not rotate it: ',
      'it shows the key overdue when the rotation time passes. The current key keeps its grace period.'),
    h('div', { class: 'actions' }, button), status);
  const path = `${ADMIN}/tenants/${encodeURIComponent(tenantId)}/keys/admin/public-key`;
  if (registered) {
    const back = h('button', { type: 'button', id: 'unregister-admin-key', class: 'secondary' }, 'Use a generated admin key again');
    back.addEventListener('click', async () => {
      const yes = await confirmAction({
        title: 'Go back to a key keyward generates?',
        text: 'keyward makes a new admin key for this tenant, kept in Vault. The registered key stops working at once, '
          + 'and the SSH sessions opened with it are ended.',
        ok: 'Use a generated key',
      });
      if (!yes) return;
      await busy(back, status, async () => {
        const k = await withStepUp((headers) => api(path, { method: 'DELETE', headers, signal }));
        await reload();
        say(document.getElementById('admin-key-status') || status,
          `keyward generated the admin user's key ${k.fingerprint}; the registered key no longer works.`, 'ok');
      });
    });
    form.querySelector('.actions').append(back);
  }
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = field.value.trim();
    if (!text) {
      say(status, 'Paste the public key first.', 'error');
      field.focus();
      return;
    }
    await busy(button, status, async () => {
      const k = await api(path, { method: 'PUT', body: { publicKey: text }, signal });
      field.value = '';
      await reload();
      // The details were drawn again: the new form's status line says what happened.
      say(document.getElementById('admin-key-status') || status,
        `Registered the admin user's ${k.keyType} key ${k.fingerprint}.`, 'ok');
    });
  });
  return form;
}

async function tenantsPage({ main, signal }) {
  fill(main, h('h1', {}, 'Tenants'));
  const tenants = await load(main, `${ADMIN}/secrets/tenants`, signal);
  if (!tenants) return;
  const details = h('section', { class: 'card', id: 'tenant-details', 'aria-live': 'polite', hidden: true });
  const rows = tenants.map((t) => {
    const button = h('button', { type: 'button', class: 'secondary', 'aria-controls': 'tenant-details' }, 'Secrets');
    button.addEventListener('click', () => showTenant(t.tenantId, details, signal));
    return h('tr', { dataset: { tenantId: t.tenantId } },
      h('th', { scope: 'row' }, t.tenantId),
      h('td', {}, `${t.sshUsername}@${t.vpsIp}:${t.sshPort}`, h('div', { class: 'hint' }, `admin user ${t.adminUsername}`)),
      h('td', { class: 'fp' }, keySet(t.sshKeys.tenantSsh)),
      h('td', { class: 'fp' }, keySet(t.sshKeys.adminSsh)),
      h('td', {}, when(t.createdAt)),
      h('td', {}, button));
  });
  main.append(
    rows.length
      ? table('Tenants and the metadata of their SSH keys (never the keys themselves)', ['Tenant', 'VPS', 'Tenant key', 'Admin key', 'Created', ''], rows, { id: 'tenants' })
      : h('p', {}, 'No tenants yet.'),
    details);
}

async function showTenant(tenantId, details, signal) {
  details.hidden = false;
  fill(details, h('h2', {}, `Secrets of ${tenantId}`), h('p', {}, 'Loading…'));
  let d;
  try {
    d = await api(`${ADMIN}/secrets/tenant/${encodeURIComponent(tenantId)}`, { signal });
  } catch (e) {
    if (e.name !== 'AbortError') fill(details, h('h2', {}, `Secrets of ${tenantId}`), h('p', { class: 'notice error' }, problemText(e)));
    return;
  }
  const smtp = d.smtpCredentials;
  const dkim = d.dkim;
  fill(details,
    h('h2', {}, `Secrets of ${tenantId}`),
    h('p', { class: 'hint' }, 'Metadata only: the values stay in Vault.'),
    h('h3', {}, 'SSH keys'),
    facts([['tenant_ssh', 'tenantSsh'], ['admin_ssh', 'adminSsh']].map(([kind, field]) => {
      const k = d.sshKeys[field];
      return [kind, [keySet(k), h('div', { class: 'hint mono' }, k.vaultPath)]];
    })),
    h('h3', {}, 'SMTP'),
    smtp ? facts([['User', smtp.username], ['Generation', String(smtp.generation)], ['Last rotated', when(smtp.lastRotated)], ['Vault', h('span', { class: 'mono' }, `${smtp.vaultPath} v${smtp.vaultVersion}`)]]) : h('p', {}, 'None.'),
    h('h3', {}, 'DKIM'),
    dkim ? facts([['Selector', dkim.selector], ['DNS name', h('span', { class: 'mono' }, dkim.dnsName)], ['Record', h('pre', {}, dkim.dnsRecord)], ['Last rotated', when(dkim.lastRotated)]]) : h('p', {}, 'None.'),
    h('h3', {}, 'API tokens'),
    d.apiKeys.length
      ? table('Tokens of this tenant', ['Token', 'Role', 'Label', 'Created', 'Revoked'],
        d.apiKeys.map((k) => h('tr', {}, h('td', { class: 'mono' }, k.tokenId), h('td', {}, k.role), h('td', {}, k.label), h('td', {}, when(k.createdAt)), h('td', {}, when(k.revokedAt)))))
      : h('p', {}, 'None.'));
  const recording = h('div', { id: 'tenant-recording' });
  details.append(h('h3', {}, 'Session recording'), recording);
  await recordingPolicyPanel(tenantId, recording, signal);
  const adminKey = h('div', { id: 'tenant-admin-key' });
  details.append(h('h3', {}, 'The admin user\'s own key'), adminKey);
  fill(adminKey, adminKeyForm(tenantId, d.sshKeys.adminSsh.origin === 'registered', signal,
    () => showTenant(tenantId, details, signal)));
  const factors = h('div', { id: 'tenant-mfa' });
  details.append(h('h3', {}, 'Second factors'), factors);
  await tenantMfaPanel(tenantId, factors, signal);
  const certificates = certificatesPanel({ admin: true, tenantId, signal, level: 4 });
  details.append(h('h3', { id: 'tenant-certificates' }, 'SSH certificates'), certificates.element);
  const offboarding = h('div', { id: 'tenant-offboarding' });
  details.append(h('h3', {}, 'Offboarding'), offboarding);
  details.scrollIntoView({ block: 'nearest' });
  await Promise.all([certificates.load(), offboardingPanel(tenantId, d.offboarding, offboarding, signal)]);
}

// ---- Session recording policy: which of the tenant's users tlog records on its hosts -----------

async function recordingPolicyPanel(tenantId, container, signal) {
  const path = `${ADMIN}/tenants/${encodeURIComponent(tenantId)}/recording-policy`;
  let policy;
  try {
    policy = await api(path, { signal });
  } catch (e) {
    if (e.name !== 'AbortError') fill(container, h('p', { class: 'notice error' }, problemText(e)));
    return;
  }
  const status = statusLine('recording-policy-status');
  const boxes = {};
  const choice = (name, label, hint) => {
    const id = `recording-${name}`;
    boxes[name] = h('input', { id, name, type: 'checkbox', checked: policy[name] });
    return h('div', { class: 'check' }, boxes[name], h('label', { for: id }, label), h('p', { class: 'hint' }, hint));
  };
  const button = h('button', { type: 'submit', id: 'recording-policy-save' }, 'Save the recording policy');
  const form = h('form', { id: 'recording-policy', class: 'stack' },
    choice('recordAdmin', 'Record the platform admin user\'s sessions', 'On by default: the tenant sees what was done on its servers.'),
    choice('recordTenant', 'Record the tenant user\'s sessions', 'Off by default.'),
    choice('recordInput', 'Record keystrokes too', 'Off by default: passwords are typed at prompts.'),
    h('div', { class: 'actions' }, button), status);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(button, status, async () => {
      const body = Object.fromEntries(Object.entries(boxes).map(([name, box]) => [name, box.checked]));
      await api(path, { method: 'PUT', body, signal });
      say(status, 'Saved: the tenant\'s hosts get the new policy now.');
    });
  });
  fill(container, form);
}

// ---- Second factors: the tenant's as it lists them, and the reset when it lost them ----------------

async function tenantMfaPanel(tenantId, container, signal) {
  const path = `${ADMIN}/tenants/${encodeURIComponent(tenantId)}/mfa`;
  let listed;
  try {
    listed = await api(path, { signal });
  } catch (e) {
    if (e.name !== 'AbortError') fill(container, h('p', { class: 'notice error' }, problemText(e)));
    return;
  }
  const status = statusLine('tenant-mfa-status');
  const rows = listed.factors.map((f) => h('tr', { dataset: { factorId: f.id } },
    h('td', {}, f.kind === 'webauthn' ? `Security key ${f.name || ''}`.trim() : 'Authenticator app'),
    h('td', {}, f.confirmedAt ? when(f.confirmedAt) : badge('unconfirmed', 'warn')),
    h('td', {}, when(f.lastUsedAt)),
    h('td', {}, f.kind === 'totp' ? String(f.recoveryCodesLeft) : '—')));
  const button = h('button', { type: 'button', class: 'danger', id: 'reset-tenant-mfa', disabled: !rows.length }, 'Reset second factors');
  button.addEventListener('click', async () => {
    const yes = await confirmAction({
      title: `Reset the second factors of ${tenantId}?`,
      text: 'Removes every authenticator app and security key of this tenant and their recovery codes. '
        + 'Whoever holds one of its tokens can then enrol a new factor: check who asks first. It cannot be undone.',
      ok: 'Reset second factors',
    });
    if (!yes) return;
    await busy(button, status, async () => {
      const done = await withStepUp((headers) => api(path, { method: 'DELETE', headers, signal }));
      await tenantMfaPanel(tenantId, container, signal);
      say(document.getElementById('tenant-mfa-status') || status,
        `Removed ${done.removed} second factor${done.removed === 1 ? '' : 's'}: the tenant can enrol again.`, 'ok');
    });
  });
  fill(container,
    rows.length
      ? table('Second factors of this tenant (never their secrets)', ['Factor', 'Confirmed', 'Last used', 'Recovery codes left'], rows, { id: 'tenant-mfa-factors' })
      : h('p', {}, 'None.'),
    h('p', { class: 'hint' }, `Step-up required for: ${listed.requireFor.length ? listed.requireFor.join(', ') : 'nothing'} (${listed.policySource} policy).`),
    h('div', { class: 'actions' }, button), status);
}

// ---- Offboarding: DELETE /tenants/{id} with the id typed again, then its progress ----------------

function offboardingFacts(o) {
  const hosts = o.hosts.length
    ? h('ul', {}, o.hosts.map((x) => h('li', {}, h('span', { class: 'mono' }, x.hostId), ` ${x.state.replaceAll('_', ' ')}`)))
    : 'none';
  return facts([
    ['Status', badge(o.status.replaceAll('_', ' '), o.status === 'completed' ? 'ok' : 'warn'), 'offboarding-status'],
    ['Asked', when(o.requestedAt)],
    ['Hosts', hosts],
    ['Vault', o.vaultDestroyedAt ? ['destroyed ', when(o.vaultDestroyedAt), `: ${o.vaultDestroyed.join(', ')}`] : 'pending'],
    ['Tokens revoked', String(o.tokensRevoked)],
    ['Waiting on', o.lastError ? `a step that failed (${o.lastError}); it is retried` : (o.completedAt ? '—' : 'the hosts\' agents, then Vault')],
  ]);
}

/**
 * Shows the tenant's offboarding (`status` from its details; null when none was asked) and
 * follows it to the end, or offers it.
 */
async function offboardingPanel(tenantId, status0, container, signal) {
  const path = `${ADMIN}/tenants/${encodeURIComponent(tenantId)}`;
  const follow = async () => {
    for (;;) {
      let o;
      try {
        o = await api(`${path}/offboarding`, { signal });
      } catch (e) {
        if (e.name !== 'AbortError') fill(container, h('p', { class: 'notice error' }, problemText(e)));
        return;
      }
      fill(container, offboardingFacts(o));
      if (o.status === 'completed' || signal.aborted) return;
      await new Promise((resolve) => { setTimeout(resolve, 2000); });
    }
  };
  if (status0) {
    await follow();
    return;
  }
  const status = statusLine('offboard-status');
  const confirmField = h('input', { id: 'offboard-confirm', autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'offboard-hint' });
  const button = h('button', { type: 'submit', class: 'danger', id: 'offboard' }, 'Offboard this tenant');
  const form = h('form', { id: 'offboard-form' },
    h('p', { id: 'offboard-hint', class: 'hint' },
      'Removes keyward\'s keys from every host of the tenant and ends their sessions, then revokes the hosts, '
      + 'destroys every secret under its Vault path (all versions) and revokes its tokens. It cannot be undone.'),
    h('label', { for: 'offboard-confirm' }, `Type ${tenantId} to confirm`), confirmField, button, status);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(button, status, async () => {
      if (confirmField.value !== tenantId) {
        say(status, `Type ${tenantId} exactly to confirm.`, 'error');
        return;
      }
      await api(path, { method: 'DELETE', body: { confirm: confirmField.value }, signal });
      await follow();
    });
  });
  fill(container, form);
}

// ---- Audit log and logins: filters and paging -------------------------------------------------

function filterForm(id, fields, onSubmit) {
  const inputs = {};
  const form = h('form', { id, class: 'filters', role: 'search' },
    fields.map(([name, label, kind, options]) => {
      const inputId = `${id}-${name}`;
      const input = kind === 'select'
        ? h('select', { id: inputId, name }, h('option', { value: '' }, 'any'), options.map((o) => h('option', { value: o }, o)))
        : h('input', { id: inputId, name, type: kind, placeholder: kind === 'datetime-local' ? undefined : label.toLowerCase() });
      inputs[name] = input;
      return h('label', { for: inputId }, label, input);
    }),
    h('button', { type: 'submit' }, 'Apply filters'));
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

async function pagedTable({ container, status, path, params, signal, caption, headers, row, id }) {
  let cursor = null;
  const body = h('tbody', {});
  const more = h('button', { type: 'button', class: 'secondary', id: `${id}-more`, hidden: true }, 'Older');
  fill(container, scrollBox(caption, h('table', { id },
    h('caption', {}, caption),
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))), body)),
  h('div', { class: 'actions' }, more));
  async function page() {
    const query = new URLSearchParams(params);
    query.set('limit', '50');
    if (cursor !== null) query.set('cursor', String(cursor));
    await busy(more, status, async () => {
      const answer = await api(`${path}?${query}`, { signal });
      say(status, '');
      body.append(...answer.events.map(row));
      if (!body.children.length) body.append(h('tr', {}, h('td', { colspan: headers.length }, 'Nothing matches.')));
      cursor = answer.nextCursor ?? null;
    });
    more.hidden = cursor === null;
  }
  more.addEventListener('click', page);
  await page();
}

async function auditPage({ main, signal }) {
  const status = statusLine('audit-status');
  const results = h('div', {});
  const verdict = statusLine('audit-verdict');
  const verify = h('button', { type: 'button', class: 'secondary', id: 'verify-chain' }, 'Verify the hash chain');
  verify.addEventListener('click', () => busy(verify, verdict, async () => {
    const v = await api(`${ADMIN}/audit/verify`, { signal });
    const head = v.head;
    const signed = head && head.checkpoint
      ? ` Signed up to event ${head.checkpoint.seq} (${head.checkpoint.signedAt}), ${head.signedHeads} signed heads checked.`
      : '';
    let text;
    if (v.firstBrokenSeq !== null) text = `The chain is broken at event ${v.firstBrokenSeq}: ${v.reason}`;
    else if (head && head.status !== 'ok') text = `The chain links, but its signed head says ${head.status}: ${head.reason}`;
    else text = `The chain is whole: ${v.checked} events checked.${signed}`;
    say(verdict, text, v.ok ? 'ok' : 'error');
  }));
  const show = (params) => pagedTable({
    container: results, status, path: `${ADMIN}/audit`, params, signal, id: 'audit',
    caption: 'Audit events, newest first. Each is linked to the one before it by a SHA-256 hash.',
    headers: ['#', 'Time', 'Action', 'Outcome', 'Tenant', 'Actor', 'From', 'Detail'],
    row: (e) => h('tr', { dataset: { action: e.action } },
      h('td', {}, String(e.seq)), h('td', {}, when(e.at)), h('td', { class: 'mono' }, e.action),
      h('td', {}, badge(e.outcome, e.outcome === 'success' ? 'ok' : 'bad')), h('td', {}, e.tenantId ?? '—'),
      h('td', {}, e.actorRole, e.actorTokenId ? h('div', { class: 'hint mono' }, e.actorTokenId) : null),
      h('td', {}, e.sourceAddr ?? '—'), h('td', { class: 'fp' }, JSON.stringify(e.detail))),
  });
  fill(main, h('h1', {}, 'Audit log'),
    filterForm('audit-filters', [
      ['tenantId', 'Tenant', 'text'], ['action', 'Action', 'text'],
      ['since', 'From', 'datetime-local'], ['until', 'Until', 'datetime-local'],
    ], show),
    h('div', { class: 'actions' }, verify), verdict, status, results);
  await show(new URLSearchParams());
}

async function loginsPage({ main, signal }) {
  const status = statusLine('logins-status');
  const results = h('div', {});
  const show = (params) => pagedTable({
    container: results, status, path: `${ADMIN}/audit/logins`, params, signal, id: 'logins',
    caption: 'SSH logins and attempts reported by the agents, newest first. Unverified: a line of a log file that sshd itself is not known to have written (anyone on the host, or a client before authenticating, can forge one).',
    headers: ['Time', 'Host', 'Tenant', 'User', 'Outcome', 'Key', 'From', 'Fingerprint', 'Evidence'],
    row: (e) => h('tr', { dataset: { verified: e.verified ? 'yes' : 'no' } },
      h('td', {}, when(e.at)), h('td', {}, e.hostId), h('td', {}, e.tenantId), h('td', {}, e.user),
      h('td', {}, outcome(e.outcome)), h('td', {}, e.keyKind ? `${e.keyKind}${e.keyGeneration ? ` #${e.keyGeneration}` : ''}` : e.method),
      h('td', {}, e.sourceIp), h('td', { class: 'fp' }, e.fingerprint ?? '—'),
      h('td', { class: 'evidence' }, evidence(e))),
  });
  fill(main, h('h1', {}, 'Logins'),
    filterForm('logins-filters', [
      ['tenantId', 'Tenant', 'text'], ['hostId', 'Host', 'text'], ['user', 'User', 'text'],
      ['keyKind', 'Key', 'select', ['admin', 'tenant', 'unmanaged']],
      ['outcome', 'Outcome', 'select', ['accepted', 'failed', 'invalid_user', 'closed_preauth', 'disconnected']],
      ['since', 'From', 'datetime-local'],
    ], show),
    status, results);
  await show(new URLSearchParams());
}

// ---- Vault -------------------------------------------------------------------------------

async function vaultPage({ main, signal }) {
  fill(main, h('h1', {}, 'Vault'));
  const v = await load(main, `${ADMIN}/vault/health`, signal);
  if (!v) return;
  const healthy = v.initialized && !v.sealed;
  main.append(h('section', { class: 'card', id: 'vault-health' },
    h('h2', {}, 'Health'),
    facts([
      ['State', badge(healthy ? 'unsealed' : v.sealed ? 'sealed' : 'not initialized', healthy ? 'ok' : 'bad'), 'vault-state'],
      ['Role', v.standby ? 'standby' : 'active'],
      ['Active node', v.activeNode],
      ['Version', v.version],
      ['Cluster', v.clusterName ?? '—'],
      ['Storage', v.storageStatus],
      ['Last backup', when(v.lastBackup)],
      ['Backups', badge(v.backupStatus, v.backupStatus === 'ok' ? 'ok' : v.backupStatus === 'failed' ? 'bad' : 'off')],
      v.backupError ? ['Backup error', v.backupError] : null,
    ].filter(Boolean))));
  const s = await load(main, `${ADMIN}/audit/sinks`, signal);
  if (!s) return;
  const tone = (status) => (status === 'ok' ? 'ok' : status === 'failing' ? 'bad' : 'warn');
  main.append(h('section', { class: 'card', id: 'audit-sinks' },
    h('h2', {}, 'Audit export'),
    s.sinks.length
      ? table('Audit export sinks', ['Sink', 'Type', 'Status', 'Behind', 'Last delivery', 'Last error'],
        s.sinks.map((k) => h('tr', { dataset: { sink: k.name } },
          h('td', { class: 'mono' }, k.name), h('td', {}, `${k.type} (${k.format})`),
          h('td', {}, badge(k.status, tone(k.status))),
          h('td', {}, k.lagEvents ? `${k.lagEvents} events since ${when(k.oldestPendingAt)}` : 'up to date'),
          h('td', {}, when(k.lastSuccessAt)), h('td', {}, k.lastError ?? '—'))))
      : h('p', {}, 'No sink is configured ([audit_export] in the server configuration).')));
}

// ---- Bulk rotation -----------------------------------------------------------------------

function jobRow(j) {
  return h('tr', { dataset: { jobId: j.jobId } },
    h('td', { class: 'mono' }, j.jobId), h('td', {}, j.secretType),
    h('td', {}, badge(j.status, j.status === 'completed' ? 'ok' : j.status === 'running' ? 'info' : 'warn')),
    h('td', {}, `${j.rotatedCount} rotated, ${j.failedCount} failed, ${j.skippedCount} skipped of ${j.total}`),
    h('td', {}, when(j.startedAt)), h('td', {}, when(j.finishedAt)));
}

async function rotationPage({ main, signal }) {
  const status = statusLine('rotation-status');
  const progress = h('progress', { id: 'rotation-progress', max: 1, value: 0, 'aria-labelledby': 'progress-label' });
  const label = h('p', { id: 'progress-label' }, 'No rotation running.');
  const failures = h('ul', { id: 'rotation-failures' });
  const jobs = h('div', {});
  const select = h('select', { id: 'secret-type', name: 'secretType' },
    h('option', { value: 'ssh' }, 'SSH keys (admin and tenant key of every tenant)'),
    h('option', { value: 'smtp' }, 'SMTP credentials'),
    h('option', { value: 'dkim' }, 'DKIM keys'));
  const start = h('button', { type: 'submit', id: 'start-rotation', class: 'danger' }, 'Rotate all');
  const form = h('form', { class: 'stack', id: 'rotation-form' },
    h('label', { for: 'secret-type' }, 'What to rotate', select),
    h('p', { class: 'hint' }, 'Every tenant gets a new secret. For SSH keys the previous key keeps working for each tenant\'s grace period, so sessions open now go on; tenants must download their new key.'),
    h('div', { class: 'actions' }, start));

  async function listJobs() {
    try {
      const list = await api(`${ADMIN}/secrets/rotate-all`, { signal });
      fill(jobs, list.length
        ? table('Recent bulk rotations, newest first', ['Job', 'Secrets', 'Status', 'Result', 'Started', 'Finished'], list.map(jobRow), { id: 'jobs' })
        : h('p', {}, 'No bulk rotation yet.'));
      return list;
    } catch (e) {
      if (e.name !== 'AbortError') fill(jobs, h('p', { class: 'notice error' }, problemText(e)));
      return [];
    }
  }

  function show(job) {
    const done = job.rotatedCount + job.failedCount + job.skippedCount;
    progress.max = Math.max(job.total, 1);
    progress.value = job.total ? done : 1;
    progress.dataset.status = job.status;
    label.textContent = `${job.secretType}: ${done} of ${job.total} tenants (${job.rotatedCount} rotated, ${job.failedCount} failed, ${job.skippedCount} skipped) — ${job.status}`;
    fill(failures, (job.failures || []).map((f) => h('li', {}, `${f.tenantId}: ${f.reason} (${f.code})`)));
  }

  async function watch(job) {
    show(job);
    await follow(`${ADMIN}/secrets/rotate-all/${encodeURIComponent(job.jobId)}/events`, {
      signal,
      onEvent(name, data) {
        if (name !== 'progress' && name !== 'done') return undefined;
        const j = JSON.parse(data);
        show(j);
        if (name === 'done') {
          say(status, `Bulk rotation ${j.status}: ${j.rotatedCount} rotated, ${j.failedCount} failed.`, j.failedCount ? 'warn' : 'ok');
          listJobs();
          return 'stop';
        }
        return undefined;
      },
    });
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const type = select.value;
    const yes = await confirmAction({
      title: `Rotate the ${type} secrets of every tenant?`,
      text: 'This starts at once and cannot be undone. Only one bulk rotation runs at a time.',
      ok: 'Rotate all',
    });
    if (!yes) return;
    await busy(start, status, async () => {
      const job = await withStepUp((headers) => api(`${ADMIN}/secrets/rotate-all?async=true`, { method: 'POST', body: { secretType: type }, headers, signal }));
      say(status, `Started job ${job.jobId}.`, 'ok');
      listJobs();
      watch(job);
    });
  });

  fill(main, h('h1', {}, 'Bulk rotation'),
    h('section', { class: 'card' }, h('h2', {}, 'Start'), form),
    h('section', { class: 'card' }, h('h2', {}, 'Progress'), label, progress, failures, status),
    h('section', { class: 'card' }, h('h2', {}, 'History'), jobs));
  const list = await listJobs();
  const running = list.find((j) => j.status === 'running');
  if (running) watch(running);
}

/** The admin token's own second factors. */
async function adminMfaPage({ main, signal }) {
  const section = h('section', { class: 'card', 'aria-labelledby': 'mfa-title', id: 'mfa' });
  fill(main, h('h1', {}, 'Two-step verification'),
    h('p', {}, 'Authenticator apps set up here belong to the API token you signed in with.'), section);
  await mfaSection({ section, base: `${ADMIN}/mfa`, signal });
}

export const adminPages = {
  mfa: adminMfaPage,
  hosts: hostsPage,
  tenants: tenantsPage,
  audit: auditPage,
  logins: loginsPage,
  vault: vaultPage,
  rotation: rotationPage,
};
