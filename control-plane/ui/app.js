// keyward's pages: the router, the navigation and the sign-in page.

import { api, fill, h, Problem, say, session, statusLine, whenSignedOut } from './core.js';
import { tenantPage } from './tenant.js';
import { tenantCertificatesPage } from './certs.js';
import { tenantAccessPage, adminAccessPage } from './access.js';
import { adminPages } from './admin.js';
import { recordingsPage } from './recordings.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');

/** Stops the live parts (streams, timers) of the page being left. */
let leaving = new AbortController();
let signInMessage = '';

const tenantNav = [['#/tenant', 'SSH access'], ['#/tenant/certificates', 'SSH certificates'], ['#/tenant/access', 'Access'], ['#/tenant/recordings', 'Recordings']];
const adminNav = [
  ['#/admin/hosts', 'Hosts'],
  ['#/admin/tenants', 'Tenants'],
  ['#/admin/audit', 'Audit log'],
  ['#/admin/logins', 'Logins'],
  ['#/admin/recordings', 'Recordings'],
  ['#/admin/vault', 'Vault'],
  ['#/admin/rotation', 'Bulk rotation'],
  ['#/admin/access', 'Access requests'],
  ['#/admin/mfa', 'Two-step verification'],
];

function home() { return session.role === 'admin' ? '#/admin/hosts' : '#/tenant'; }

function signOut(message = '') {
  session.clear();
  signInMessage = message;
  if (location.hash === '#/signin') render(); else location.hash = '#/signin';
}
whenSignedOut(signOut);

/** Signs out: a cookie session is ended on the server first (the cookie then works nowhere). */
async function signOutClicked() {
  if (session.csrf) {
    try {
      await api('/auth/signout', { method: 'POST' });
    } catch (e) {
      if (!(e instanceof Problem && e.status === 401)) {
        say(document.getElementById('signout-error') || main, `Could not sign out: ${e instanceof Problem ? e.describe() : e}`, 'error');
        return;
      }
    }
  }
  signOut('You signed out.');
}

function renderChrome(route) {
  const links = session.role === 'admin' ? adminNav : session.role === 'tenant' ? tenantNav : [];
  fill(nav, links.map(([href, text]) =>
    h('a', { href, 'aria-current': route === href ? 'page' : undefined }, text)));
  if (session.signedIn) {
    const role = session.role === 'admin' ? 'Admin' : `Tenant ${session.tenant}`;
    fill(who,
      h('span', { id: 'signed-in-as' }, session.name ? `${session.name} · ${role}` : role),
      h('button', { type: 'button', class: 'secondary', id: 'signout', onclick: signOutClicked }, 'Sign out'));
  } else {
    fill(who);
  }
}

/**
 * How one may sign in besides a token: `{ oidc, sessionCookie }` (the provider's button, and
 * whether the browser holds a session cookie). Asked once per page load.
 */
let options;
function signInOptions() {
  options ??= fetch('/api/v1/sign-in-options', { cache: 'no-store', credentials: 'same-origin' })
    .then((response) => (response.ok ? response.json() : {}))
    .catch(() => ({}));
  return options;
}

/**
 * A cookie session the identity provider's sign-in left, if any. Asked only when the browser
 * holds a session cookie, and only once: a session that ended is then told on the sign-in page.
 */
let probed = false;
async function cookieSession() {
  if (probed) return false;
  probed = true;
  if (!(await signInOptions()).sessionCookie) return false;
  try {
    const response = await fetch('/api/v1/session', { cache: 'no-store', credentials: 'same-origin' });
    if (!response.ok) return false;
    session.setCookie(await response.json());
    return true;
  } catch {
    return false;
  }
}

function signInPage() {
  const status = statusLine('signin-error');
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', required: true, autocomplete: 'off',
    spellcheck: 'false', 'aria-describedby': 'token-hint',
  });
  const button = h('button', { type: 'submit' }, 'Sign in');
  const form = h('form', { id: 'signin', class: 'stack', novalidate: true },
    h('label', { for: 'token' }, 'API token'),
    input,
    h('p', { id: 'token-hint', class: 'hint' },
      'Paste the API token your platform gave you (it starts with kw_). It is kept only in this ',
      'browser tab and sent with each request; closing the tab forgets it.'),
    h('div', { class: 'actions' }, button),
    status);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) { say(status, 'Enter your API token.', 'error'); input.focus(); return; }
    button.disabled = true;
    say(status, '');
    try {
      const me = await api('/api/v1/whoami', { token });
      session.set(token, me);
      input.value = '';
      location.hash = home();
    } catch (e) {
      const text = e instanceof Problem && (e.status === 401)
        ? 'This token is not valid (wrong, revoked or mistyped). Check it and try again.'
        : e instanceof Problem ? e.describe() : String(e);
      say(status, text, 'error');
      input.focus();
    } finally {
      button.disabled = false;
    }
  });
  const page = [h('h1', {}, 'Sign in'), form];
  signInOptions().then(({ oidc }) => {
    if (!oidc || !form.isConnected) return;
    form.before(h('p', { class: 'actions' },
      h('a', { id: 'oidc-signin', class: 'button', href: oidc.loginUrl }, `Sign in with ${oidc.displayName}`)),
    h('p', { class: 'hint' }, 'Or use an API token:'));
  });
  if (signInMessage) {
    page.splice(1, 0, h('p', { class: 'notice', role: 'status' }, signInMessage));
    signInMessage = '';
  }
  fill(main, page);
  input.focus();
}

function notFound() {
  fill(main, h('h1', {}, 'Page not found'), h('p', {}, h('a', { href: home() }, 'Go to your start page')));
}

async function render() {
  leaving.abort();
  leaving = new AbortController();
  const route = location.hash || '';
  if (!session.signedIn && await cookieSession()) { location.replace(home()); return; }
  if (!session.signedIn) {
    if (route !== '#/signin') { location.replace('#/signin'); return; }
    renderChrome(route);
    document.title = 'Sign in · keyward';
    signInPage();
    return;
  }
  if (route === '' || route === '#/' || route === '#/signin') { location.replace(home()); return; }
  renderChrome(route);
  const context = { main, signal: leaving.signal };
  if (route === '#/tenant' && session.role === 'tenant') {
    document.title = 'SSH access · keyward';
    await tenantPage(context);
  } else if (route === '#/tenant/certificates' && session.role === 'tenant') {
    document.title = 'SSH certificates · keyward';
    await tenantCertificatesPage(context);
  } else if (route === '#/tenant/access' && session.role === 'tenant') {
    document.title = 'Access · keyward';
    await tenantAccessPage(context);
  } else if (route === '#/tenant/recordings' && session.role === 'tenant') {
    document.title = 'Recordings · keyward';
    await recordingsPage(context, false);
  } else if (route === '#/admin/recordings' && session.role === 'admin') {
    document.title = 'Recordings · keyward';
    await recordingsPage(context, true);
  } else if (route === '#/admin/access' && session.role === 'admin') {
    document.title = 'Access requests · keyward';
    await adminAccessPage(context);
  } else if (route.startsWith('#/admin/') && session.role === 'admin') {
    const name = route.slice('#/admin/'.length);
    const page = adminPages[name];
    if (!page) { notFound(); return; }
    document.title = `${adminNav.find(([href]) => href === route)?.[1] ?? name} · keyward`;
    await page(context);
  } else {
    notFound();
  }
  main.focus({ preventScroll: true });
}

window.addEventListener('hashchange', render);
render();
