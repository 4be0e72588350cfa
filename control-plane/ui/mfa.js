// Second factors: the step-up prompt every sensitive action goes through (withStepUp), and the
// page section that enrols a TOTP factor (QR code, secret, confirmation, recovery codes shown
// once) or a security key (WebAuthn: navigator.credentials.create, named) and removes one. Used
// by the tenant's and the admin's pages alike; only `base` differs.

import { api, busy, confirmAction, fill, h, Problem, say, STEP_UP_CODES, statusLine, when } from './core.js';

const SVG = 'http://www.w3.org/2000/svg';

/** Where the signed-in principal's security keys are (`.../mfa`), once the section saw one. */
let securityKeys = null;

/** base64url (no padding) of an ArrayBuffer, and back (what the server's JSON carries). */
function toBase64url(buffer) {
  let text = '';
  for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
  return btoa(text).replaceAll('+', '-').replaceAll('/', '_').replace(/=+$/, '');
}
function fromBase64url(value) {
  return Uint8Array.from(atob(value.replaceAll('-', '+').replaceAll('_', '/')), (c) => c.charCodeAt(0));
}

/** The creation options of a registration, with their binary members as bytes. */
function creationOptions(publicKey) {
  return {
    ...publicKey,
    challenge: fromBase64url(publicKey.challenge),
    user: { ...publicKey.user, id: fromBase64url(publicKey.user.id) },
    excludeCredentials: (publicKey.excludeCredentials || []).map((c) => ({ ...c, id: fromBase64url(c.id) })),
  };
}

/** The request options of a step-up challenge, with their binary members as bytes. */
function requestOptions(publicKey) {
  return {
    ...publicKey,
    challenge: fromBase64url(publicKey.challenge),
    allowCredentials: (publicKey.allowCredentials || []).map((c) => ({ ...c, id: fromBase64url(c.id) })),
  };
}

/** Asks the security key for a signed answer to a fresh challenge: the header value. */
async function securityKeyProof(base) {
  const challenge = await api(`${base}/webauthn/challenge`, { method: 'POST' });
  const credential = await navigator.credentials.get({ publicKey: requestOptions(challenge.publicKey) });
  const r = credential.response;
  const assertion = {
    id: credential.id,
    rawId: toBase64url(credential.rawId),
    type: credential.type,
    response: {
      authenticatorData: toBase64url(r.authenticatorData),
      clientDataJSON: toBase64url(r.clientDataJSON),
      signature: toBase64url(r.signature),
      userHandle: r.userHandle ? toBase64url(r.userHandle) : null,
    },
    extensions: {},
  };
  return `webauthn:${toBase64url(new TextEncoder().encode(JSON.stringify(assertion)))}`;
}

/** Asks for a code in the page's modal dialog, or for the security key; resolves to the header value or null. */
function askSecondFactor(problem) {
  const dialog = document.getElementById('step-up');
  const input = document.getElementById('step-up-code');
  const keyButton = document.getElementById('step-up-key');
  const keys = securityKeys;
  keyButton.hidden = !keys;
  document.getElementById('step-up-text').textContent = problem.code === 'mfa_required'
    ? (keys ? 'This action needs your security key, or a fresh code from your authenticator app.' : 'This action needs a fresh code from your authenticator app.')
    : `${problem.describe()} Enter the current code (wait for the next one if you just used it)${keys ? ', or use your security key' : ''}.`;
  input.value = '';
  dialog.returnValue = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      const typed = input.value.trim();
      input.value = '';
      if (dialog.returnValue === 'key' && keys) {
        // A security key that is gone, or a prompt cancelled, is a step-up not given.
        securityKeyProof(keys).then(resolve, () => resolve(null));
        return;
      }
      if (dialog.returnValue !== 'ok' || !typed) { resolve(null); return; }
      // Six digits are a TOTP code; anything else is taken for a recovery code.
      resolve(/^[0-9]{6}$/.test(typed) ? `totp:${typed}` : `recovery:${typed}`);
    }, { once: true });
    dialog.showModal();
    input.focus();
  });
}

/**
 * Runs `call(headers)`; when the server asks for a second factor, prompts for one and calls
 * again with `X-Keyward-MFA`, until it is taken or the person cancels (the Problem is thrown).
 */
export async function withStepUp(call) {
  let headers = {};
  for (;;) {
    try {
      return await call(headers);
    } catch (e) {
      if (!(e instanceof Problem) || !STEP_UP_CODES.includes(e.code)) throw e;
      const value = await askSecondFactor(e);
      if (!value) throw e;
      headers = { 'X-Keyward-MFA': value };
    }
  }
}

/**
 * The QR code of an enrolment, drawn from the server's SVG: only its viewBox and its paths'
 * `d` and `fill` are copied, as attributes of elements made here (no markup is inserted).
 */
function qrImage(svgText) {
  const parsed = new DOMParser().parseFromString(svgText, 'image/svg+xml');
  const source = parsed.documentElement;
  if (!source || source.nodeName !== 'svg') return null;
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', source.getAttribute('viewBox') || `0 0 ${source.getAttribute('width')} ${source.getAttribute('height')}`);
  svg.setAttribute('width', '200');
  svg.setAttribute('height', '200');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', 'QR code to scan with your authenticator app');
  svg.setAttribute('shape-rendering', 'crispEdges');
  svg.id = 'mfa-qr';
  for (const shape of source.querySelectorAll('path, rect')) {
    const copy = document.createElementNS(SVG, shape.nodeName);
    for (const name of ['d', 'fill', 'x', 'y', 'width', 'height']) {
      const value = shape.getAttribute(name);
      if (value !== null) copy.setAttribute(name, value);
    }
    svg.append(copy);
  }
  return svg;
}

/** The "Two-step verification" section for the factors under `base` (`/api/v1/tenant/mfa`). */
export async function mfaSection({ section, base, signal }) {
  const status = statusLine('mfa-status');
  // Kept across renders: the recovery codes stay on screen after the list is redrawn.
  const setup = h('div', { id: 'mfa-setup' });

  async function render() {
    let view;
    try {
      view = await api(base, { signal });
    } catch (e) {
      if (e.name === 'AbortError') return;
      fill(section, h('h2', { id: 'mfa-title' }, 'Two-step verification'),
        h('p', { class: 'notice error' }, e instanceof Problem ? e.describe() : String(e)));
      return;
    }
    const required = view.requireFor.length
      ? h('p', { id: 'mfa-required-for' }, 'A second factor (authenticator app code or security key) is asked for: ',
        view.requireFor.map((op) => op.replaceAll('_', ' ')).join(', '), '.')
      : h('p', { id: 'mfa-required-for' }, 'No action needs a second factor yet; you can set one up now.');
    securityKeys = view.factors.some((f) => f.kind === 'webauthn') ? base : null;
    const rows = view.factors.map((f) => {
      const key = f.kind === 'webauthn';
      const remove = h('button', { type: 'button', class: 'secondary', 'data-factor': f.id }, 'Remove');
      remove.addEventListener('click', async () => {
        if (!await confirmAction(key
          ? { title: 'Remove this security key?', text: 'It will no longer be accepted.', ok: 'Remove' }
          : { title: 'Remove this authenticator?', text: 'Codes from it will no longer be accepted, nor its recovery codes.', ok: 'Remove' })) return;
        await busy(remove, status, async () => {
          await withStepUp((headers) => api(`${base}/${key ? 'webauthn' : 'totp'}/${encodeURIComponent(f.id)}`, { method: 'DELETE', headers, signal }));
          say(status, key ? 'The security key was removed.' : 'The authenticator was removed.', 'ok');
          await render();
        });
      });
      if (key) {
        return h('li', { class: 'factor', 'data-kind': 'webauthn' }, 'Security key ', h('strong', {}, f.name || ''),
          ', added ', when(f.createdAt), f.lastUsedAt ? '; last used ' : ' ', f.lastUsedAt ? when(f.lastUsedAt) : '', ' ', remove);
      }
      return h('li', { class: 'factor' },
        f.confirmedAt ? 'Authenticator app, added ' : 'Authenticator app (not confirmed), started ',
        when(f.confirmedAt || f.createdAt),
        f.confirmedAt ? `; ${f.recoveryCodesLeft} recovery codes left ` : ' ', remove);
    });
    const enrol = h('button', { type: 'button', id: 'mfa-enrol' }, 'Set up an authenticator app');
    enrol.addEventListener('click', () => busy(enrol, status, async () => {
      const e = await withStepUp((headers) => api(`${base}/totp`, { method: 'POST', headers, signal }));
      showSetup(setup, e);
    }));
    const keyName = h('input', { id: 'mfa-key-name', name: 'key-name', maxlength: 64, placeholder: 'e.g. YubiKey on my keyring', autocomplete: 'off' });
    const addKey = h('button', { type: 'button', id: 'mfa-add-key' }, 'Add a security key');
    addKey.addEventListener('click', () => busy(addKey, status, async () => {
      const name = keyName.value.trim();
      if (!name) { say(status, 'Name the security key first.', 'error'); keyName.focus(); return; }
      if (!window.PublicKeyCredential) { say(status, 'This browser cannot use security keys.', 'error'); return; }
      const started = await withStepUp((headers) => api(`${base}/webauthn/registrations`, { method: 'POST', headers, signal }));
      let credential;
      try {
        credential = await navigator.credentials.create({ publicKey: creationOptions(started.publicKey) });
      } catch (e) {
        say(status, `The security key did not answer (${e.name || e}).`, 'error');
        return;
      }
      const r = credential.response;
      await api(`${base}/webauthn/registrations/${encodeURIComponent(started.id)}`, {
        method: 'POST',
        signal,
        body: {
          name,
          credential: {
            id: credential.id,
            rawId: toBase64url(credential.rawId),
            type: credential.type,
            response: { attestationObject: toBase64url(r.attestationObject), clientDataJSON: toBase64url(r.clientDataJSON) },
            extensions: {},
          },
        },
      });
      keyName.value = '';
      await render();
      say(status, 'The security key was added.', 'ok');
    }));
    fill(section, h('h2', { id: 'mfa-title' }, 'Two-step verification'), required,
      rows.length ? h('ul', { id: 'mfa-factors' }, rows) : h('p', { id: 'mfa-none' }, 'No authenticator app or security key is set up.'),
      h('div', { class: 'actions' }, enrol),
      h('div', { class: 'actions' }, h('label', { for: 'mfa-key-name' }, 'Security key name'), keyName, addKey),
      setup, status);
  }

  function showSetup(setup, e) {
    const code = h('input', { id: 'mfa-code', name: 'code', inputmode: 'numeric', autocomplete: 'one-time-code', maxlength: 6, pattern: '[0-9]{6}', required: true });
    const confirm = h('button', { type: 'submit', id: 'mfa-confirm' }, 'Confirm');
    const form = h('form', { class: 'stack', novalidate: true },
      h('label', { for: 'mfa-code' }, 'The 6-digit code your app shows now'), code,
      h('div', { class: 'actions' }, confirm));
    const qr = e.qrSvg ? qrImage(e.qrSvg) : null;
    fill(setup,
      h('p', {}, 'Scan this QR code with your authenticator app (or type the secret into it), then enter the code it shows. ',
        'The secret is shown only now.'),
      qr,
      h('p', {}, 'Secret: ', h('code', { id: 'mfa-secret' }, e.secret)),
      h('details', {}, h('summary', {}, 'otpauth:// link'), h('pre', { id: 'mfa-uri' }, e.otpauthUri)),
      form);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      if (!/^[0-9]{6}$/.test(code.value.trim())) { say(status, 'Enter the 6 digits your app shows.', 'error'); code.focus(); return; }
      await busy(confirm, status, async () => {
        const answer = await api(`${base}/totp/${encodeURIComponent(e.id)}/confirm`, { method: 'POST', body: { code: code.value.trim() }, signal });
        code.value = '';
        await render();
        fill(setup,
          h('p', { class: 'notice warn' }, h('strong', {}, 'Save these recovery codes now: they are shown only once. '),
            'Each one works once in place of a code, if you lose your phone.'),
          h('pre', { id: 'mfa-recovery-codes' }, answer.recoveryCodes.join('\n')));
        say(status, 'Two-step verification is on.', 'ok');
      });
    });
    code.focus();
  }

  await render();
}
