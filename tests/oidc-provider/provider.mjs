// A certified OpenID Provider (panva/oidc-provider) on loopback, for keyward's sign-in tests
// (tests/src/oidc_provider.rs starts it). Not for anything but tests.
//
// Environment:
//   OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OIDC_REDIRECT_URI  the one static client (keyward)
//   OIDC_USERS  JSON: { "<login>": { "claims": {...}, "amr": ["pwd", "otp"], "acr": "...",
//               "forge": false } }; claims go into the ID token (name, groups, keyward_tenant).
//               "forge": true re-signs that user's ID tokens with a key the provider never
//               published (same header and claims, wrong signature): a forged token.
//
// The login interaction is a one-field form (#login, #signin): the login name picks the user.
// Consent is implied for the static client. Prints {"issuer": "..."} on stdout once listening.

import { createServer } from 'node:http';
import { generateKeyPairSync, createSign } from 'node:crypto';
import Provider from 'oidc-provider';

const users = JSON.parse(process.env.OIDC_USERS || '{}');
const server = createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: process.env.OIDC_CLIENT_ID,
    client_secret: process.env.OIDC_CLIENT_SECRET,
    redirect_uris: [process.env.OIDC_REDIRECT_URI],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  claims: {
    // amr with the openid scope: every ID token says how its user authenticated.
    openid: ['sub', 'amr'],
    profile: ['name', 'groups', 'keyward_tenant'],
    acr: null,
    auth_time: null,
  },
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, id) {
    const user = users[id];
    if (!user) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...user.claims }; } };
  },
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(ctx.oidc.params.scope);
    await grant.save();
    return grant;
  },
  cookies: { keys: ['keyward-test-oidc-provider'] },
});

// Forged ID tokens: the user's token re-signed with a key of our own.
const { privateKey: forger } = generateKeyPairSync('rsa', { modulusLength: 2048 });
provider.use(async (ctx, next) => {
  await next();
  if (ctx.path !== '/token' || ctx.status !== 200 || !ctx.body?.id_token) return;
  const [header, payload] = ctx.body.id_token.split('.');
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString());
  if (!users[claims.sub]?.forge) return;
  const signer = createSign('RSA-SHA256');
  signer.update(`${header}.${payload}`);
  ctx.body = { ...ctx.body, id_token: `${header}.${payload}.${signer.sign(forger).toString('base64url')}` };
});

const page = (uid, message = '') => `<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Test identity provider</title></head><body><main><h1>Test identity provider</h1>
<form method="post" action="/interaction/${uid}">
<label for="login">Login</label> <input id="login" name="login" autocomplete="off">
<button id="signin" type="submit">Sign in</button></form><p id="message">${message}</p></main></body></html>`;

const form = async (req) => {
  let body = '';
  for await (const chunk of req) body += chunk;
  return new URLSearchParams(body);
};

const callback = provider.callback();
server.on('request', async (req, res) => {
  const match = /^\/interaction\/([A-Za-z0-9_-]+)$/.exec(req.url);
  if (!match) { callback(req, res); return; }
  try {
    await provider.interactionDetails(req, res);
    if (req.method === 'GET') {
      res.setHeader('content-type', 'text/html; charset=utf-8');
      res.end(page(match[1]));
      return;
    }
    const login = (await form(req)).get('login') || '';
    const user = users[login];
    if (!user) {
      res.setHeader('content-type', 'text/html; charset=utf-8');
      res.end(page(match[1], 'No such user.'));
      return;
    }
    await provider.interactionFinished(req, res, {
      login: { accountId: login, amr: user.amr || ['pwd'], acr: user.acr, remember: false },
    }, { mergeWithLastSubmission: false });
  } catch (e) {
    res.statusCode = 400;
    res.end(String(e.message || e));
  }
});

// The test reads one line from stdout and may close it: anything later goes to stderr, and a
// closed stdout is no crash.
process.stdout.on('error', () => {});
process.stdout.write(`${JSON.stringify({ issuer })}\n`);
console.log = console.error;
console.info = console.error;
