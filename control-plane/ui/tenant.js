// The tenant's page: credentials, the one-time key download (or the key the tenant registered
// instead), connection instructions, key actions with their consequences spelled out, and the
// login history.

import {
  api, badge, busy, confirmAction, facts, fill, h, Problem, say, statusLine, table, when,
} from './core.js';
import { mfaSection, withStepUp } from './mfa.js';

const BASE = '/api/v1/tenant/infrastructure/ssh-credentials';
const KEY_FILE = 'tenant-ssh-key.pem';
const POLICY = '/api/v1/tenant/infrastructure/download-policy';
const REGISTRATION_POLICY = '/api/v1/tenant/infrastructure/key-registration-policy';

const KEY_STATES = {
  active: ['active', 'ok'],
  revoked: ['revoked', 'bad'],
};

export async function tenantPage({ main, signal }) {
  const credentials = h('section', { class: 'card', 'aria-labelledby': 'credentials-title' });
  const download = h('section', { class: 'card', 'aria-labelledby': 'download-title' });
  const connect = h('section', { class: 'card', 'aria-labelledby': 'connect-title' });
  const manage = h('section', { class: 'card', 'aria-labelledby': 'manage-title' });
  const ownKey = h('section', { class: 'card', 'aria-labelledby': 'own-key-title' });
  const logins = h('section', { class: 'card', 'aria-labelledby': 'logins-title' });
  const mfa = h('section', { class: 'card', 'aria-labelledby': 'mfa-title', id: 'mfa' });
  const pageStatus = statusLine('page-status');
  fill(main, h('h1', {}, 'Your SSH access'), pageStatus,
    h('div', { class: 'grid' }, credentials, download), connect, ownKey, manage, mfa, logins);

  const downloadStatus = statusLine('download-status');
  const actionStatus = statusLine('action-status');
  const ownKeyStatus = statusLine('own-key-status');

  async function refresh() {
    let c;
    let policy;
    let registration;
    try {
      [c, policy, registration] = await Promise.all([
        api(BASE, { signal }), api(POLICY, { signal }), api(REGISTRATION_POLICY, { signal })]);
    } catch (e) {
      if (e.name === 'AbortError') return;
      say(pageStatus, e instanceof Problem ? e.describe() : String(e), 'error');
      return;
    }
    say(pageStatus, '');
    renderCredentials(c);
    renderDownload(c, policy);
    renderConnect(c);
    renderOwnKey(c, registration);
    renderManage(c);
  }

  function renderCredentials(c) {
    const [stateText, stateKind] = KEY_STATES[c.keyStatus] || [c.keyStatus, 'info'];
    fill(credentials,
      h('h2', { id: 'credentials-title' }, 'Credentials'),
      facts([
        ['VPS address', c.vpsIp, 'vps-address'],
        ['SSH user', c.sshUsername, 'ssh-user'],
        ['SSH port', String(c.sshPort), 'ssh-port'],
        c.keyOrigin === 'registered'
          ? ['Key', `your own ${c.keyType} key, generation ${c.keyGeneration}`, 'key-origin']
          : ['Key', `${c.keyAlgorithm}, generation ${c.keyGeneration}`, 'key-origin'],
        ['Key status', badge(stateText, stateKind), 'key-status'],
        ['Fingerprint', c.keyFingerprint ? h('code', {}, c.keyFingerprint) : 'none (revoked)', 'fingerprint'],
        ['Last rotated', when(c.lastRotated)],
        ['Next rotation', c.rotationOverdue
          ? [when(c.nextRotation), ' ', badge('overdue: register a new key', 'warn')]
          : when(c.nextRotation), 'next-rotation'],
        c.previousKeyFingerprint && c.previousKeyValidUntil
          ? ['Previous key works until', [when(c.previousKeyValidUntil), ' (', h('code', {}, c.previousKeyFingerprint), ')']]
          : null,
      ].filter(Boolean)));
  }

  function renderDownload(c, policy) {
    if (c.keyOrigin === 'registered') {
      fill(download, h('h2', { id: 'download-title' }, 'Private key'),
        h('p', { id: 'download-registered' },
          'You registered your own public key: its private key stays with you, and keyward has nothing to download.'));
      return;
    }
    const button = h('button', { type: 'submit', id: 'download', disabled: c.keyStatus !== 'active' }, 'Download private key');
    const warning = c.downloaded
      ? h('p', { class: 'notice warn', id: 'download-warning' },
        'This key has already been downloaded. keyward keeps no other copy for you: if you lost it, ',
        'regenerate the key below and download the new one.')
      : h('p', { class: 'notice warn', id: 'download-warning' },
        h('strong', {}, 'You can download this private key once. '),
        `Save ${KEY_FILE} somewhere safe right away: a second download is refused, and the only `,
        'way to get a key again is to regenerate it.');
    // The passphrase, typed twice; the page keeps it only until the download is sent.
    const required = policy.requirePassphrase;
    const min = policy.minPassphraseLength;
    const field = (id, name) => h('input', {
      id, name, type: 'password', autocomplete: 'new-password', maxlength: 1024, required,
      'aria-describedby': 'passphrase-hint',
    });
    const passphrase = field('passphrase', 'passphrase');
    const again = field('passphrase-again', 'passphraseAgain');
    const hint = h('p', { id: 'passphrase-hint', class: 'hint' },
      'With a passphrase the key file is encrypted (as ssh-keygen -p does): whoever gets hold of the file ',
      'also needs the passphrase, and ssh asks you for it when you connect. keyward does not keep the ',
      'passphrase: it is not stored or logged, and nobody can recover it for you. If you forget it, ',
      'regenerate the key. ',
      h('strong', {}, required
        ? `Your platform requires a passphrase of at least ${min} characters.`
        : `Optional: leave both fields empty for an unencrypted key file, or use at least ${min} characters.`));
    const form = h('form', { id: 'download-form', class: 'stack', novalidate: true },
      h('label', { for: 'passphrase' }, required ? 'Passphrase' : 'Passphrase (optional)', passphrase),
      h('label', { for: 'passphrase-again' }, 'Passphrase again', again),
      hint,
      h('div', { class: 'actions' }, button));
    const clear = () => { passphrase.value = ''; again.value = ''; };
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const typed = passphrase.value;
      // Characters as the server counts them (code points, not UTF-16 units).
      const length = [...typed].length;
      let refusal = '';
      if (typed !== again.value) refusal = 'The two passphrases do not match. Type the same passphrase in both fields.';
      else if (required && !typed) refusal = `A passphrase is required: at least ${min} characters.`;
      else if (typed && length < min) refusal = `The passphrase is too short: at least ${min} characters.`;
      if (refusal) {
        say(downloadStatus, refusal, 'error');
        passphrase.focus();
        return;
      }
      say(downloadStatus, '');
      const yes = await confirmAction({
        title: 'Download the private key?',
        text: `The key file ${KEY_FILE} is handed out once. After this, keyward refuses to show it again; `
          + 'if you lose it you must regenerate the key. Keep it private and never share it.'
          + (typed ? ' It will be encrypted with your passphrase, which keyward does not keep.' : ''),
        ok: 'Download now',
      });
      if (!yes) return;
      await busy(button, downloadStatus, async () => {
        const options = { method: 'POST', raw: true, signal };
        if (typed) options.body = { passphrase: typed };
        // Where the platform asks for a second factor, the code is asked for here.
        const response = await withStepUp((headers) => api(`${BASE}/download`, { ...options, headers }));
        clear();
        const blob = await response.blob();
        const url = URL.createObjectURL(blob);
        const link = h('a', { href: url, download: KEY_FILE, hidden: true });
        document.body.append(link);
        link.click();
        link.remove();
        setTimeout(() => URL.revokeObjectURL(url), 60000);
        say(downloadStatus, typed
          ? `Downloaded ${KEY_FILE}, encrypted with your passphrase. Run chmod 600 on it before you use it (see below); ssh asks for the passphrase when you connect.`
          : `Downloaded ${KEY_FILE}. Run chmod 600 on it before you use it (see below).`, 'ok');
        await refresh();
      });
    });
    fill(download, h('h2', { id: 'download-title' }, 'Private key'), warning, form, downloadStatus);
  }

  function renderConnect(c) {
    const target = `${c.sshUsername}@${c.vpsIp}`;
    const jump = c.proxyJump ? ` -J ${c.proxyJump}` : '';
    const registered = c.keyOrigin === 'registered';
    // A registered key's private half is the tenant's own file, wherever it keeps it.
    const keyFile = registered ? 'PATH-TO-YOUR-PRIVATE-KEY' : KEY_FILE;
    const command = `ssh -i ${keyFile}${jump} -p ${c.sshPort} ${target}`;
    const bastion = c.proxyJump
      ? [h('li', {}, 'Your platform routes SSH through its bastion ', h('code', {}, c.proxyJump),
        '. The bastion lets you through with an SSH certificate only: get one on the ',
        h('a', { href: '#/tenant/certificates' }, 'SSH certificates'),
        ' page for the key you connect with and keep it beside the key (ssh then offers it to both). ',
        'To type less, add this to ~/.ssh/config and connect with "ssh my-vps":',
        h('pre', { id: 'ssh-config' }, [
          'Host my-vps',
          `  HostName ${c.vpsIp}`,
          `  Port ${c.sshPort}`,
          `  User ${c.sshUsername}`,
          `  IdentityFile ${registered ? keyFile : `~/.ssh/${KEY_FILE}`}`,
          `  ProxyJump ${c.proxyJump}`,
        ].join('\n')))]
      : [];
    const hostKeys = c.hostKeyFingerprints.length
      ? [
        h('p', {}, 'Before you connect the first time, make sure you reach your own server. Its host keys have these fingerprints:'),
        h('ul', { id: 'host-key-fingerprints' }, c.hostKeyFingerprints.map((f) => h('li', {}, h('code', {}, f)))),
        h('p', {}, 'Either add these lines to ~/.ssh/known_hosts, so that ssh checks them for you:'),
        h('pre', { id: 'known-hosts' }, c.knownHosts.join('\n')),
        h('p', {}, 'or compare the fingerprint ssh shows on the first connection with the list above, and answer "yes" only if it matches.'),
      ]
      : [h('p', { class: 'notice warn' },
        'Your server has not reported its host keys yet. On the first connection ssh shows the host key ',
        'fingerprint: ask your platform for it before you answer "yes".')];
    fill(connect,
      h('h2', { id: 'connect-title' }, 'Connect'),
      h('ol', {},
        registered
          ? h('li', { id: 'own-key-step' }, 'Use the private key of the public key you registered (or your security key): keyward never had it.')
          : h('li', {}, `Keep the downloaded key as ${KEY_FILE} and make it readable only by you (ssh refuses keys others can read):`,
            h('pre', { id: 'chmod-command' }, `chmod 600 ${KEY_FILE}`)),
        h('li', {}, 'Check the server\'s identity:', hostKeys),
        ...bastion,
        h('li', {}, 'Connect:', h('pre', { id: 'ssh-command' }, command))));
  }

  // Registering the tenant's own public key instead of using a generated one.
  function renderOwnKey(c, registration) {
    const registered = c.keyOrigin === 'registered';
    const fido2 = registration.requireFido2;
    const field = h('textarea', {
      id: 'public-key', name: 'publicKey', rows: 3, maxlength: 8192, required: true,
      spellcheck: 'false', autocomplete: 'off', 'aria-describedby': 'public-key-hint',
    });
    const hint = h('p', { id: 'public-key-hint', class: 'hint' },
      'Paste the one line of your .pub file (for example ~/.ssh/id_ed25519.pub). keyward then never has your ',
      'private key: there is nothing to download, and keyward does not rotate the key for you. When the ',
      'rotation time passes, this page says the key is overdue and you register a new one. The key it replaces ',
      'keeps working for the grace period. ',
      h('strong', {}, fido2
        ? 'Your platform requires a FIDO2 security key (made with ssh-keygen -t ed25519-sk or ecdsa-sk).'
        : 'Taken: Ed25519, ECDSA, RSA of at least 3072 bits, and FIDO2 security keys (ed25519-sk, ecdsa-sk).'),
      registration.verifyRequired ? ' Your security key will have to verify you (PIN or biometric) at each login.' : '');
    const button = h('button', { type: 'submit', id: 'register-key' }, registered ? 'Replace my key' : 'Register my key');
    const form = h('form', { id: 'own-key-form', class: 'stack', novalidate: true },
      h('label', { for: 'public-key' }, 'Public key', field), hint, h('div', { class: 'actions' }, button));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const text = field.value.trim();
      if (!text) {
        say(ownKeyStatus, 'Paste your public key first.', 'error');
        field.focus();
        return;
      }
      const yes = await confirmAction({
        title: registered ? 'Replace your registered key?' : 'Use your own key?',
        text: 'The key you use now keeps working for the grace period; then only the key you register opens your VPS.',
        ok: registered ? 'Replace' : 'Register',
      });
      if (!yes) return;
      await busy(button, ownKeyStatus, async () => {
        const answer = await api(`${BASE}/public-key`, { method: 'PUT', body: { publicKey: text }, signal });
        field.value = '';
        say(ownKeyStatus, `Registered your ${answer.keyType} key ${answer.fingerprint}.`, 'ok');
        await refresh();
      });
    });
    // Back to a key keyward generates: a regeneration, so the registered key stops at once.
    let back = null;
    if (registered) {
      back = h('button', { type: 'button', id: 'unregister-key', class: 'secondary', 'aria-describedby': 'unregister-key-what' }, 'Use a generated key again');
      back.addEventListener('click', async () => {
        const yes = await confirmAction({
          title: 'Go back to a key keyward generates?',
          text: 'keyward makes a new key for you to download once. The key you registered stops working at once, '
            + 'and the SSH sessions opened with it are ended.',
          ok: 'Use a generated key',
        });
        if (!yes) return;
        await busy(back, ownKeyStatus, async () => {
          const answer = await withStepUp((headers) => api(`${BASE}/public-key`, { method: 'DELETE', headers, signal }));
          say(ownKeyStatus, `keyward generated a new key ${answer.fingerprint}: download it above.`, 'ok');
          await refresh();
        });
      });
    }
    fill(ownKey, h('h2', { id: 'own-key-title' }, registered ? 'Your own key' : 'Use your own key instead'),
      form,
      back ? h('div', { class: 'action' },
        h('p', { id: 'unregister-key-what' }, 'Lost your own key, or want keyward to manage it again? '
          + 'keyward generates a key, which you download once; the key you registered stops working at once.'),
        back) : null,
      ownKeyStatus);
  }

  function renderManage(c) {
    const graceNote = 'The current key keeps working for the grace period (24 hours unless your platform set another)';
    const actions = [
      {
        id: 'rotate', label: 'Rotate key', kind: '',
        what: `Makes a new key. ${graceNote}, so sessions open now go on and you have time to switch. Download the new key afterwards.`,
        title: 'Rotate the SSH key?', ok: 'Rotate',
        path: 'rotate', disabled: c.keyStatus !== 'active' || c.keyOrigin === 'registered',
      },
      {
        id: 'regenerate', label: 'Regenerate key', kind: 'danger',
        what: 'Makes a new key and stops the current one at once: SSH sessions opened with the current key are ended on your VPS. Use this when the key may be exposed, or to get a key after revoking.',
        title: 'Regenerate the SSH key?', ok: 'Regenerate and end sessions',
        path: 'regenerate', disabled: c.keyOrigin === 'registered',
      },
      {
        id: 'revoke', label: 'Revoke key', kind: 'danger',
        what: 'Stops the current key at once and ends the SSH sessions opened with it. You have no working key until you regenerate one.',
        title: 'Revoke the SSH key?', ok: 'Revoke and end sessions',
        path: 'revoke', disabled: c.keyStatus !== 'active',
      },
    ];
    fill(manage, h('h2', { id: 'manage-title' }, 'Manage the key'),
      actions.map((a) => {
        const button = h('button', { type: 'button', id: a.id, class: a.kind, disabled: a.disabled, 'aria-describedby': `${a.id}-what` }, a.label);
        button.addEventListener('click', async () => {
          if (!await confirmAction({ title: a.title, text: a.what, ok: a.ok })) return;
          await busy(button, actionStatus, async () => {
            const answer = await withStepUp((headers) => api(`${BASE}/${a.path}`, { method: 'POST', headers, signal }));
            say(actionStatus, answer.newKeyFingerprint
              ? `${answer.message} New fingerprint: ${answer.newKeyFingerprint}`
              : answer.message, 'ok');
            await refresh();
          });
        });
        return h('div', { class: 'action' }, h('p', { id: `${a.id}-what` }, a.what), button);
      }),
      actionStatus);
  }

  async function loadLogins() {
    let page;
    try {
      page = await api('/api/v1/tenant/infrastructure/ssh-logins?limit=50', { signal });
    } catch (e) {
      if (e.name === 'AbortError') return;
      fill(logins, h('h2', { id: 'logins-title' }, 'Login history'),
        h('p', { class: 'notice error' }, e instanceof Problem ? e.describe() : String(e)));
      return;
    }
    const rows = page.events.map((e) => h('tr', { dataset: { verified: e.verified ? 'yes' : 'no' } },
      h('td', {}, when(e.at)), h('td', {}, e.user), h('td', {}, outcome(e.outcome)),
      h('td', {}, e.keyKind ?? e.method), h('td', {}, `${e.sourceIp}`), h('td', { class: 'fp' }, e.fingerprint ?? '—'),
      h('td', { class: 'evidence' }, evidence(e))));
    fill(logins, h('h2', { id: 'logins-title' }, 'Login history'),
      rows.length
        ? table('Your most recent SSH logins and attempts, newest first. Unverified: a line of a log file that sshd itself is not known to have written.',
          ['Time', 'User', 'Outcome', 'Key', 'From', 'Key fingerprint', 'Evidence'], rows, { id: 'logins' })
        : h('p', { id: 'logins-empty' }, 'No logins recorded yet.'));
  }

  await Promise.all([refresh(), loadLogins(), mfaSection({ section: mfa, base: '/api/v1/tenant/mfa', signal })]);
}

// Whether the agent verified a login event (journald's trusted fields, or a live connection of
// the real sshd for a log file's accepted login): said in words, not only by a style.
export function evidence(e) {
  return e.verified ? 'verified' : 'unverified (log claim)';
}

export function outcome(value) {
  const kinds = { accepted: 'ok', failed: 'bad', invalid_user: 'bad', closed_preauth: 'warn', disconnected: 'off' };
  return badge(value.replace('_', ' '), kinds[value] || 'info');
}
