// Just-in-time access: requests to enter a tenant's VPSs for a while with one's own key, their
// approvals and the grants they became. The tenant's page (#/tenant/access) shows every request
// and grant on its VPSs (the platform's too: who, when, why), decides the platform's requests
// when its policy asks for its approval, sets that policy, and requests access for its own user;
// the admin's page (#/admin/access) lists every request, decides and revokes, and requests.

import {
  api, badge, busy, confirmAction, fill, h, Problem, say, statusLine, table, when,
} from './core.js';

const STATES = {
  pending: 'warn', active: 'ok', expired: 'off', denied: 'bad', lapsed: 'off', revoked: 'bad',
};

const DURATIONS = [
  [900, '15 minutes'],
  [3600, '1 hour'],
  [4 * 3600, '4 hours'],
  [8 * 3600, '8 hours'],
];

function problemText(e) { return e instanceof Problem ? e.describe() : String(e); }

function minutes(seconds) {
  return seconds >= 3600 && seconds % 3600 === 0 ? `${seconds / 3600} h` : `${Math.round(seconds / 60)} min`;
}

/** What the grant still waits for, in words. */
function waitingFor(g) {
  const missing = [];
  if (g.needsTenantApproval && !g.tenantApproved) missing.push('the tenant');
  if (g.needsAdminApproval && !g.adminApproved) missing.push('another admin');
  return missing.length ? `waits for ${missing.join(' and ')}` : '';
}

/**
 * The requests list with its actions. `admin`: the admin's view (every tenant, a status filter);
 * otherwise the tenant's own. Returns { element, load }.
 */
function grantsPanel({ admin, signal }) {
  const base = admin ? '/api/v1/admin/access-requests' : '/api/v1/tenant/infrastructure/access-requests';
  const list = h('div', { id: 'grants-list' }, h('p', {}, 'Loading…'));
  const status = statusLine('grants-status');
  const filter = admin
    ? h('select', { id: 'grants-filter', name: 'status' },
      h('option', { value: 'pending' }, 'pending'),
      h('option', { value: 'active' }, 'active'),
      h('option', { value: '' }, 'all'))
    : null;
  if (filter) filter.addEventListener('change', () => load());

  function action(g, operation, text, kind) {
    const button = h('button', {
      type: 'button', class: `${kind} grant-${operation}`, 'aria-label': `${text} request ${g.grantId}`,
    }, text);
    button.addEventListener('click', () => operate(g, operation, button));
    return button;
  }

  function row(g) {
    const mayApprove = g.status === 'pending' && (admin
      ? g.needsAdminApproval && !g.adminApproved
      : g.needsTenantApproval && !g.tenantApproved);
    const buttons = [];
    if (mayApprove) buttons.push(action(g, 'approve', 'Approve', 'secondary'), action(g, 'deny', 'Deny', 'danger'));
    if (g.status === 'pending' || g.status === 'active') buttons.push(action(g, 'revoke', 'Revoke', 'danger'));
    const who = g.requesterRole === 'admin' ? 'the platform' : 'the tenant';
    return h('tr', { dataset: { grantId: g.grantId, status: g.status } },
      h('th', { scope: 'row' }, when(g.requestedAt), h('div', { class: 'hint mono' }, g.grantId)),
      ...(admin ? [h('td', {}, g.tenantId)] : []),
      h('td', {}, who, admin && g.requestedBy ? h('div', { class: 'hint mono' }, g.requestedBy) : null),
      h('td', {}, g.kind === 'admin' ? 'admin user' : 'tenant user'),
      h('td', {}, g.reason),
      h('td', {}, minutes(g.durationSeconds)),
      h('td', { class: 'grant-status' }, badge(g.status, STATES[g.status] || 'info'),
        h('div', { class: 'hint' }, g.status === 'pending' ? waitingFor(g) : (g.endsAt ? `until ${new Date(g.endsAt).toLocaleString()}` : ''))),
      h('td', {}, buttons.length ? h('div', { class: 'actions' }, buttons) : ''));
  }

  async function load() {
    let answer;
    const query = filter && filter.value ? `?status=${encodeURIComponent(filter.value)}` : '';
    try {
      answer = await api(`${base}${query}`, { signal });
    } catch (e) {
      if (e.name === 'AbortError') return;
      fill(list, h('p', { class: 'notice error', id: 'grants-error' }, problemText(e)));
      return;
    }
    const headers = ['Requested', ...(admin ? ['Tenant'] : []), 'By', 'Enters as', 'Reason', 'For', 'Status', 'Action'];
    fill(list, answer.grants.length
      ? table(admin ? 'Access requests and grants, newest first' : 'Access requests and grants on your VPSs, newest first',
        headers, answer.grants.map(row), { id: 'grants' })
      : h('p', { id: 'grants-empty' }, 'No access requests.'));
  }

  async function operate(g, operation, button) {
    if (operation !== 'approve') {
      const yes = await confirmAction({
        title: `${operation === 'deny' ? 'Deny' : 'Revoke'} request ${g.grantId}?`,
        text: operation === 'deny'
          ? 'The request is refused for good; a new one can be made.'
          : 'Its certificate is refused from the next login on and the SSH sessions it opened are ended.',
        ok: operation === 'deny' ? 'Deny' : 'Revoke and end sessions',
      });
      if (!yes) return;
    }
    await busy(button, status, async () => {
      const answer = await api(`${base}/${encodeURIComponent(g.grantId)}/${operation}`, { method: 'POST', signal });
      say(status, `Request ${answer.grantId} is ${answer.status}.`, 'ok');
      await load();
    });
  }

  const element = h('section', { class: 'card', 'aria-labelledby': 'grants-title' },
    h('h2', { id: 'grants-title' }, 'Requests and grants'),
    filter ? h('label', { for: 'grants-filter' }, 'Show', filter) : null,
    status, list);
  return { element, load };
}

/** The form to request access with one's own public key. */
function requestForm({ admin, signal, onDone }) {
  const status = statusLine('access-form-status');
  const result = h('div', { id: 'access-result', hidden: true });
  const tenant = admin ? h('input', { id: 'access-tenant', name: 'tenantId', type: 'text', required: true, autocomplete: 'off' }) : null;
  const kind = admin
    ? h('select', { id: 'access-kind', name: 'kind' },
      h('option', { value: 'tenant' }, 'the tenant\'s user'),
      h('option', { value: 'admin' }, 'the platform\'s admin user'))
    : null;
  const publicKey = h('textarea', {
    id: 'access-public-key', name: 'publicKey', rows: 3, required: true, autocomplete: 'off',
    spellcheck: 'false', 'aria-describedby': 'access-public-key-hint',
  });
  const duration = h('select', { id: 'access-duration', name: 'durationSeconds' },
    DURATIONS.map(([seconds, text]) => h('option', { value: seconds, selected: seconds === 3600 }, text)));
  const reason = h('input', { id: 'access-reason', name: 'reason', type: 'text', required: true, maxlength: 200, autocomplete: 'off' });
  const submit = h('button', { type: 'submit', id: 'access-request' }, 'Request access');
  const form = h('form', { id: 'access-form', class: 'stack', novalidate: true },
    tenant ? h('label', { for: 'access-tenant' }, 'Tenant', tenant) : null,
    kind ? h('label', { for: 'access-kind' }, 'Enter as', kind) : null,
    h('label', { for: 'access-public-key' }, 'Your public key', publicKey),
    h('p', { id: 'access-public-key-hint', class: 'hint' },
      'The contents of your public key file, for example ~/.ssh/id_ed25519.pub. Never a private key.'),
    h('label', { for: 'access-duration' }, 'For', duration),
    h('label', { for: 'access-reason' }, 'Why (shown to the tenant and kept in the audit log)', reason),
    h('div', { class: 'actions' }, submit),
    status);

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = publicKey.value.trim();
    if (/PRIVATE KEY/.test(text)) {
      publicKey.value = '';
      say(status, 'That is a private key: it was not sent, and the field was cleared. Paste the public key (the .pub file) instead.', 'error');
      publicKey.focus();
      return;
    }
    if (!text || !reason.value.trim() || (tenant && !tenant.value.trim())) {
      say(status, `Fill in ${tenant ? 'the tenant, ' : ''}your public key and why.`, 'error');
      return;
    }
    const body = { publicKey: text, durationSeconds: Number(duration.value), reason: reason.value.trim() };
    if (kind) body.kind = kind.value;
    const path = admin
      ? `/api/v1/admin/tenants/${encodeURIComponent(tenant.value.trim())}/access-requests`
      : '/api/v1/tenant/infrastructure/access-requests';
    await busy(submit, status, async () => {
      const g = await api(path, { method: 'POST', body, signal });
      say(status, g.status === 'active'
        ? `Access granted until ${new Date(g.endsAt).toLocaleString()}.`
        : `Request ${g.grantId} recorded: it ${waitingFor(g)}. Its certificate appears here once it is granted.`, 'ok');
      if (g.certificate) {
        const cert = h('textarea', { id: 'access-certificate', rows: 5, readonly: true, spellcheck: 'false', 'aria-label': 'Certificate' });
        cert.value = g.certificate;
        fill(result, h('p', {}, 'Save this beside your private key as KEY-cert.pub (for ~/.ssh/id_ed25519: ~/.ssh/id_ed25519-cert.pub).'), cert);
        result.hidden = false;
      }
      await onDone();
    });
  });

  return h('section', { class: 'card', 'aria-labelledby': 'access-form-title' },
    h('h2', { id: 'access-form-title' }, admin ? 'Request access to a tenant\'s VPSs' : 'Request access for your user'),
    form, result);
}

/** The tenant's policy: whether the platform's admins need its approval. */
function policyPanel({ signal }) {
  const path = '/api/v1/tenant/infrastructure/access-policy';
  const status = statusLine('policy-status');
  const choice = h('select', { id: 'policy-choice', name: 'platformAccess' },
    h('option', { value: 'notify' }, 'may enter; I am shown every visit'),
    h('option', { value: 'approval' }, 'need my approval first'));
  const save = h('button', { type: 'submit', id: 'policy-save', class: 'secondary' }, 'Save');
  const form = h('form', { id: 'policy-form', class: 'stack', novalidate: true },
    h('label', { for: 'policy-choice' }, 'The platform\'s admins', choice),
    h('div', { class: 'actions' }, save), status);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    await busy(save, status, async () => {
      await api(path, { method: 'PUT', body: { platformAccess: choice.value }, signal });
      say(status, 'Saved.', 'ok');
    });
  });
  async function load() {
    try {
      choice.value = (await api(path, { signal })).platformAccess;
    } catch (e) {
      if (e.name !== 'AbortError') say(status, problemText(e), 'error');
    }
  }
  const element = h('section', { class: 'card', 'aria-labelledby': 'policy-title' },
    h('h2', { id: 'policy-title' }, 'Who may enter your VPSs'), form);
  return { element, load };
}

/** The tenant's page (#/tenant/access). */
export async function tenantAccessPage({ main, signal }) {
  const policy = policyPanel({ signal });
  const grants = grantsPanel({ admin: false, signal });
  fill(main, h('h1', {}, 'Access'), policy.element, grants.element,
    requestForm({ admin: false, signal, onDone: grants.load }));
  await Promise.all([policy.load(), grants.load()]);
}

/** The admin's page (#/admin/access). */
export async function adminAccessPage({ main, signal }) {
  const grants = grantsPanel({ admin: true, signal });
  fill(main, h('h1', {}, 'Access requests'), grants.element,
    requestForm({ admin: true, signal, onDone: grants.load }));
  await grants.load();
}
