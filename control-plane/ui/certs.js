// SSH certificates: the list of a tenant's certificates, the form that has keyward's CA certify a
// public key the user brings (never a private key), the certificate to copy, and revoking. The
// tenant's page (#/tenant/certificates) and the admin's tenant details both use it.

import {
  api, badge, busy, confirmAction, facts, fill, h, Problem, say, statusLine, table, when,
} from './core.js';

const STATES = { active: 'ok', expired: 'off', revoked: 'bad' };

const VALIDITIES = [
  [900, '15 minutes'],
  [3600, '1 hour'],
  [8 * 3600, '8 hours'],
];

// The file ssh looks for beside a default key of each type.
const KEY_FILES = {
  'ssh-ed25519': 'id_ed25519',
  'ssh-rsa': 'id_rsa',
  'ecdsa-sha2-nistp256': 'id_ecdsa',
  'ecdsa-sha2-nistp384': 'id_ecdsa',
  'ecdsa-sha2-nistp521': 'id_ecdsa',
};

function problemText(e) { return e instanceof Problem ? e.describe() : String(e); }

/** The default key file (`id_ed25519`, ...) for a certificate's or a public key's type. */
export function keyFileFor(text) {
  const type = String(text || '').trim().split(/\s+/)[0].replace(/-cert-v01@openssh\.com$/, '');
  return KEY_FILES[type] || 'id_ed25519';
}

/**
 * The certificates part of a page. `admin`: the admin's view of `tenantId` (issuer and revoker
 * columns, a choice of user, any active certificate revocable); otherwise the tenant's own.
 * `level` is the heading level of its parts. Returns { element, load }.
 */
export function certificatesPanel({ admin = false, tenantId, signal, level = 2 }) {
  const heading = (id, text) => h(`h${level}`, { id }, text);
  const base = admin
    ? `/api/v1/admin/tenants/${encodeURIComponent(tenantId)}/ssh-certificates`
    : '/api/v1/tenant/infrastructure/ssh-certificates';
  const revokePath = (id) => (admin
    ? `/api/v1/admin/ssh-certificates/${encodeURIComponent(id)}/revoke`
    : `${base}/${encodeURIComponent(id)}/revoke`);

  const list = h('div', { id: 'certs-list' }, h('p', {}, 'Loading…'));
  const listStatus = statusLine('certs-status');
  const formStatus = statusLine('cert-form-status');
  const result = h('div', { id: 'cert-result', hidden: true });

  // ---- The list ----
  function row(c) {
    const platform = c.kind === 'admin';
    const revocable = c.status === 'active' && (admin || !platform);
    let button = null;
    if (revocable) {
      button = h('button', {
        type: 'button', class: 'danger cert-revoke', 'aria-label': `Revoke certificate ${c.certificateId}`,
      }, 'Revoke');
      button.addEventListener('click', () => revoke(c, button));
    }
    const cells = [
      h('th', { scope: 'row', class: 'mono' }, c.certificateId),
      h('td', {}, c.user, h('div', { class: 'hint' },
        platform ? 'the platform\'s admin user' : (admin ? 'the tenant\'s user' : 'your user'))),
      h('td', { class: 'cert-status' }, badge(c.status, STATES[c.status] || 'info')),
      h('td', {}, when(c.validBefore)),
      h('td', {}, c.reason || '—'),
    ];
    if (admin) {
      cells.push(
        h('td', { class: 'mono' }, c.issuedBy || '—'),
        h('td', {}, c.revokedAt ? [when(c.revokedAt), h('div', { class: 'hint mono' }, c.revokedBy || '')] : '—'),
      );
    } else {
      cells.push(h('td', {}, when(c.revokedAt)));
    }
    cells.push(h('td', {}, button || ''));
    return h('tr', { dataset: { certificateId: c.certificateId, status: c.status, kind: c.kind } }, cells);
  }

  async function load() {
    let answer;
    try {
      answer = await api(base, { signal });
    } catch (e) {
      if (e.name === 'AbortError') return;
      fill(list, h('p', { class: 'notice error', id: 'certs-error' }, problemText(e)));
      return;
    }
    const headers = ['Certificate', 'User', 'Status', 'Valid until', 'Reason',
      ...(admin ? ['Issued by', 'Revoked'] : ['Revoked']), 'Action'];
    fill(list, answer.certificates.length
      ? table(admin
        ? `SSH certificates for the VPSs of ${tenantId}, newest first`
        : 'SSH certificates for your VPSs, newest first (the platform\'s admin user\'s too)',
      headers, answer.certificates.map(row), { id: 'certs' })
      : h('p', { id: 'certs-empty' }, 'No certificates yet.'));
  }

  async function revoke(c, button) {
    const yes = await confirmAction({
      title: `Revoke certificate ${c.certificateId}?`,
      text: `${admin ? 'The tenant\'s' : 'Your'} VPSs refuse it from the next login on, and the SSH sessions opened with it are ended. `
        + 'This cannot be undone; certify the key again to get a new certificate.',
      ok: 'Revoke and end sessions',
    });
    if (!yes) return;
    await busy(button, listStatus, async () => {
      const answer = await api(revokePath(c.certificateId), { method: 'POST', signal });
      say(listStatus, `Revoked ${answer.certificateId}.`, 'ok');
      await load();
    });
  }

  // ---- The form ----
  const keyHint = admin
    ? 'The contents of the person\'s public key file (for example ~/.ssh/id_ed25519.pub). Never a private key.'
    : 'The contents of your public key file, for example ~/.ssh/id_ed25519.pub (make one with ssh-keygen -t ed25519). '
      + 'Only the public half: never paste your private key here or anywhere else.';
  const publicKey = h('textarea', {
    id: 'cert-public-key', name: 'publicKey', rows: 3, required: true, autocomplete: 'off',
    spellcheck: 'false', 'aria-describedby': 'cert-public-key-hint',
  });
  const validity = h('select', { id: 'cert-validity', name: 'validitySeconds' },
    VALIDITIES.map(([seconds, text]) => h('option', { value: seconds, selected: seconds === 3600 }, text)));
  const reason = h('input', { id: 'cert-reason', name: 'reason', type: 'text', maxlength: 200, autocomplete: 'off' });
  const kind = admin
    ? h('select', { id: 'cert-kind', name: 'kind' },
      h('option', { value: 'tenant' }, 'the tenant\'s user'),
      h('option', { value: 'admin' }, 'the platform\'s admin user'))
    : null;
  const submit = h('button', { type: 'submit', id: 'cert-issue' }, 'Get a certificate');
  const form = h('form', { id: 'cert-form', class: 'stack', novalidate: true },
    kind ? h('label', { for: 'cert-kind' }, 'Log in as', kind) : null,
    h('label', { for: 'cert-public-key' }, 'Public key', publicKey),
    h('p', { id: 'cert-public-key-hint', class: 'hint' }, keyHint),
    h('label', { for: 'cert-validity' }, 'Valid for', validity),
    h('label', { for: 'cert-reason' }, 'Reason (optional, kept in the audit log)', reason),
    h('div', { class: 'actions' }, submit),
    formStatus);

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = publicKey.value.trim();
    if (!text) { say(formStatus, 'Paste a public key.', 'error'); publicKey.focus(); return; }
    if (/PRIVATE KEY/.test(text)) {
      // Not sent anywhere, and not kept in the page.
      publicKey.value = '';
      say(formStatus, 'That is a private key: it was not sent, and the field was cleared. Paste the public key (the .pub file) instead, and keep the private key to yourself.', 'error');
      publicKey.focus();
      return;
    }
    say(formStatus, '');
    const body = { publicKey: text, validitySeconds: Number(validity.value) };
    if (reason.value.trim()) body.reason = reason.value.trim();
    if (kind) body.kind = kind.value;
    await busy(submit, formStatus, async () => {
      const c = await api(base, { method: 'POST', body, signal });
      say(formStatus, `Certificate ${c.certificateId} issued, valid until ${new Date(c.validBefore).toLocaleString()}.`, 'ok');
      showResult(c);
      await load();
    });
  });

  function showResult(c) {
    const file = keyFileFor(c.certificate);
    const copyStatus = statusLine('cert-copy-status');
    const text = h('textarea', {
      id: 'cert-text', rows: 6, readonly: true, spellcheck: 'false', 'aria-describedby': 'cert-save-hint',
    });
    text.value = c.certificate;
    const copy = h('button', { type: 'button', class: 'secondary', id: 'cert-copy' }, 'Copy the certificate');
    copy.addEventListener('click', async () => {
      try {
        await navigator.clipboard.writeText(c.certificate);
        say(copyStatus, 'Copied.', 'ok');
      } catch {
        text.focus();
        text.select();
        say(copyStatus, 'The browser did not allow copying: the text is selected, press Ctrl+C (or ⌘C).', 'warn');
      }
    });
    fill(result,
      heading('cert-result-title', admin ? 'The certificate' : 'Your certificate'),
      facts([
        ['Certificate', h('code', {}, c.certificateId), 'cert-id'],
        ['Logs in as', c.user],
        ['Valid until', when(c.validBefore)],
        ['Key', h('code', {}, c.keyFingerprint)],
      ]),
      h('label', { for: 'cert-text' }, 'Certificate'),
      text,
      h('p', { id: 'cert-save-hint' },
        'Save it beside the private key, named as the key with -cert.pub added: for ',
        h('code', {}, `~/.ssh/${file}`), ' that is ', h('code', { id: 'cert-file' }, `~/.ssh/${file}-cert.pub`),
        ' (for a key at PATH, PATH-cert.pub). ssh then offers it by itself with the key: ',
        h('code', {}, `ssh -i ~/.ssh/${file} ${c.user}@…`), '. It stops working when it expires or is revoked.'),
      h('div', { class: 'actions' }, copy),
      copyStatus);
    result.hidden = false;
    text.focus();
  }

  const formTitle = admin ? 'Certify a public key' : 'Certify your public key';
  const element = h('div', { class: 'certs' },
    h('section', { class: admin ? 'part' : 'card', 'aria-labelledby': 'certs-form-title' },
      heading('certs-form-title', formTitle),
      h('p', { class: 'hint' }, admin
        ? 'keyward\'s certificate authority signs the key for one managed user of this tenant, for a limited time.'
        : 'keyward\'s certificate authority signs your key for your SSH user, for a limited time: no key to download, nothing to rotate.'),
      form, result),
    h('section', { class: admin ? 'part' : 'card', 'aria-labelledby': 'certs-list-title' },
      heading('certs-list-title', 'Certificates'), listStatus, list));
  return { element, load };
}

/** The tenant's page of certificates (#/tenant/certificates). */
export async function tenantCertificatesPage({ main, signal }) {
  const panel = certificatesPanel({ signal, level: 2 });
  fill(main, h('h1', {}, 'SSH certificates'), panel.element);
  await panel.load();
}
