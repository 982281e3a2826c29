// A real OpenID Connect provider for buildmaster's sign-in tests, built on the
// certified `oidc-provider` package. See README.md in this directory for the
// environment variables and the HTTP protocol (sign-in page, test controls).
//
//   PORT=8123 CLIENTS='[...]' ACCOUNTS='{...}' node provider.mjs
//
// Everything is in memory: a restart forgets sessions, codes and tokens, and
// generates a new signing key (with KEY_ID as its kid, if given).

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import { CompactSign, decodeJwt, decodeProtectedHeader } from 'jose';
import Provider from 'oidc-provider';

// ---------------------------------------------------------------------------
// Configuration from the environment

function fail(message) {
  process.stderr.write(`oidc-provider: ${message}\n`);
  process.exit(2);
}

function jsonEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  try {
    return JSON.parse(raw);
  } catch (err) {
    return fail(`${name} is not valid JSON: ${err.message}`);
  }
}

function integerEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) fail(`${name} must be a non-negative integer, not ${JSON.stringify(raw)}`);
  return value;
}

// 0 (or unset) listens on a port the kernel picks; the line printed when
// listening names the port either way.
const PORT = integerEnv('PORT', 0);
const ID_TOKEN_TTL = integerEnv('ID_TOKEN_TTL', 600);
const KEY_ID = process.env.KEY_ID || crypto.randomBytes(8).toString('hex');
const CLIENTS = jsonEnv('CLIENTS', []);
const ACCOUNTS = jsonEnv('ACCOUNTS', {});

if (!Array.isArray(CLIENTS)) fail('CLIENTS must be a JSON array of client metadata objects');
if (ACCOUNTS === null || typeof ACCOUNTS !== 'object' || Array.isArray(ACCOUNTS)) {
  fail('ACCOUNTS must be a JSON object: account id -> claims object');
}
for (const [id, claims] of Object.entries(ACCOUNTS)) {
  if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) {
    fail(`ACCOUNTS.${id} must be an object of claims`);
  }
}

// Claims released per scope. `sub` is always the account id.
const CLAIMS = {
  openid: ['sub'],
  profile: [
    'name', 'family_name', 'given_name', 'middle_name', 'nickname',
    'preferred_username', 'profile', 'picture', 'website', 'gender',
    'birthdate', 'zoneinfo', 'locale', 'updated_at',
  ],
  email: ['email', 'email_verified'],
  groups: ['groups'],
};

// ---------------------------------------------------------------------------
// Keys

// A fresh RSA key per process: restarting with another KEY_ID rotates keys.
function newRsaKey() {
  return crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
}

const signingKey = newRsaKey();
const signingJwk = {
  ...signingKey.export({ format: 'jwk' }),
  kid: KEY_ID,
  alg: 'RS256',
  use: 'sig',
};

// ---------------------------------------------------------------------------
// Test controls: one armed tampering of the next token response's id_token

let tampering = null; // { claims, key } while armed

async function tamperIdToken(idToken, { claims, key }) {
  const header = decodeProtectedHeader(idToken);
  const payload = { ...decodeJwt(idToken) };
  for (const [name, value] of Object.entries(claims)) {
    if (value === null) delete payload[name];
    else payload[name] = value;
  }
  // The original header (alg RS256 and the provider's kid), whatever key signs.
  return new CompactSign(new TextEncoder().encode(JSON.stringify(payload)))
    .setProtectedHeader(header)
    .sign(key);
}

// ---------------------------------------------------------------------------
// The provider

function buildProvider(issuer) {
  const configuration = {
    clients: CLIENTS,
    jwks: { keys: [signingJwk] },
    cookies: {
      keys: [crypto.randomBytes(32).toString('hex')],
    },
    claims: CLAIMS,
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    // The relying party reads the profile, email and groups claims (roles)
    // from the ID token, not from the userinfo endpoint.
    conformIdTokenClaims: false,
    pkce: {
      required: () => true,
    },
    features: {
      devInteractions: { enabled: false },
    },
    interactions: {
      url: (ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    async findAccount(ctx, sub) {
      if (!Object.hasOwn(ACCOUNTS, sub)) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { ...ACCOUNTS[sub], sub };
        },
      };
    },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      Grant: 3600,
      IdToken: ID_TOKEN_TTL,
      Interaction: 3600,
      RefreshToken: 86400,
      Session: 3600,
    },
    clientBasedCORS: () => true,
    async renderError(ctx, out) {
      ctx.type = 'text/plain; charset=utf-8';
      ctx.body = Object.entries(out).map(([key, value]) => `${key}: ${value}`).join('\n') + '\n';
    },
  };

  const provider = new Provider(issuer, configuration);

  provider.use(async (ctx, next) => {
    await next();
    if (
      tampering
      && ctx.oidc?.route === 'token'
      && ctx.status === 200
      && ctx.body
      && typeof ctx.body.id_token === 'string'
    ) {
      const armed = tampering;
      tampering = null;
      ctx.body = { ...ctx.body, id_token: await tamperIdToken(ctx.body.id_token, armed) };
      process.stderr.write('oidc-provider: tampered with the id_token of this token response\n');
    }
  });

  for (const event of [
    'server_error',
    'authorization.error',
    'grant.error',
    'userinfo.error',
    'end_session.error',
    'jwks.error',
    'discovery.error',
  ]) {
    provider.on(event, (ctx, err) => {
      const detail = err.error_description ? ` (${err.error_description})` : '';
      process.stderr.write(`oidc-provider: ${event}: ${err.message}${detail}\n`);
    });
  }

  return provider;
}

// ---------------------------------------------------------------------------
// HTTP: the sign-in interaction and test controls; the rest is oidc-provider

function send(res, status, body, type = 'text/plain; charset=utf-8') {
  res.statusCode = status;
  res.setHeader('Cache-Control', 'no-store');
  if (body === undefined) {
    res.end();
    return;
  }
  res.setHeader('Content-Type', type);
  res.end(body);
}

function readBody(req, limit = 64 * 1024) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        reject(new Error('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function escapeHtml(value) {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function loginPage(uid, details) {
  const { params } = details;
  return `<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>Sign in</title></head>
<body>
<h1>Sign in</h1>
<p>Client <code id="client-id">${escapeHtml(params.client_id)}</code> asks for
<code id="scope">${escapeHtml(params.scope ?? '')}</code>.</p>
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
<label for="login">Account</label>
<input type="text" id="login" name="login" autocomplete="off" autofocus>
<button type="submit" id="sign-in">Sign in</button>
</form>
</body>
</html>
`;
}

// The interaction of this request (from its cookie), checked against the uid
// in the URL; answers 400 and returns undefined when there is none.
async function interactionFor(provider, req, res, uid) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    send(res, 400, `no interaction session: ${err.error_description || err.message}\n`);
    return undefined;
  }
  if (details.uid !== uid) {
    send(res, 400, 'the interaction cookie belongs to another interaction\n');
    return undefined;
  }
  return details;
}

async function finishLogin(provider, req, res, uid) {
  const form = new URLSearchParams(await readBody(req));
  const details = await interactionFor(provider, req, res, uid);
  if (!details) return;
  const accountId = form.get('login') ?? '';
  if (!Object.hasOwn(ACCOUNTS, accountId)) {
    send(res, 400, `unknown account ${JSON.stringify(accountId)}\n`);
    return;
  }
  const { params, prompt } = details;

  // Consent at once: grant whatever the client asked for.
  let grant;
  if (details.grantId) {
    grant = await provider.Grant.find(details.grantId);
  }
  if (!grant || grant.accountId !== accountId) {
    grant = new provider.Grant({ accountId, clientId: params.client_id });
  }
  if (params.scope) grant.addOIDCScope(params.scope);
  const missing = prompt?.details ?? {};
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  if (missing.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const grantId = await grant.save();

  await provider.interactionFinished(
    req,
    res,
    { login: { accountId }, consent: { grantId } },
    { mergeWithLastSubmission: false },
  );
}

async function testControl(req, res, path) {
  if (path === '/__test/health' && req.method === 'GET') {
    send(res, 200, 'ok');
    return;
  }
  if (path === '/__test/tamper' && req.method === 'POST') {
    let body;
    try {
      body = JSON.parse((await readBody(req)) || '{}');
    } catch (err) {
      send(res, 400, `body is not JSON: ${err.message}\n`);
      return;
    }
    const claims = body.claims ?? {};
    const signWith = body.sign_with ?? 'provider';
    if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) {
      send(res, 400, '"claims" must be an object\n');
      return;
    }
    if (signWith !== 'provider' && signWith !== 'other') {
      send(res, 400, '"sign_with" must be "provider" or "other"\n');
      return;
    }
    tampering = { claims, key: signWith === 'other' ? newRsaKey() : signingKey };
    send(res, 204);
    return;
  }
  send(res, 404, 'unknown test control\n');
}

let provider; // set once listening (the issuer may need the port)
let oidcCallback;

async function handle(req, res) {
  const path = new URL(req.url, 'http://localhost').pathname;
  if (path.startsWith('/__test/')) {
    await testControl(req, res, path);
    return;
  }
  const match = /^\/interaction\/([^/]+)(\/login)?$/.exec(path);
  if (match) {
    const uid = decodeURIComponent(match[1]);
    if (!match[2] && req.method === 'GET') {
      const details = await interactionFor(provider, req, res, uid);
      if (details) send(res, 200, loginPage(uid, details), 'text/html; charset=utf-8');
      return;
    }
    if (match[2] && req.method === 'POST') {
      await finishLogin(provider, req, res, uid);
      return;
    }
    send(res, 405, 'method not allowed\n');
    return;
  }
  oidcCallback(req, res);
}

const server = http.createServer((req, res) => {
  if (!provider) {
    send(res, 503, 'starting\n');
    return;
  }
  handle(req, res).catch((err) => {
    process.stderr.write(`oidc-provider: ${req.method} ${req.url}: ${err.stack || err}\n`);
    if (!res.headersSent) send(res, 500, `${err.message}\n`);
    else res.end();
  });
});

server.on('error', (err) => fail(`cannot listen on 127.0.0.1:${PORT}: ${err.message}`));

server.listen(PORT, '127.0.0.1', async () => {
  const { port } = server.address();
  const issuer = process.env.ISSUER || `http://127.0.0.1:${port}`;
  const url = URL.parse(issuer);
  if (!url) fail(`ISSUER is not a URL: ${issuer}`);
  if (url.pathname !== '/' && url.pathname !== '') fail(`ISSUER must have no path, not ${issuer}`);
  let built;
  try {
    built = buildProvider(issuer);
    // oidc-provider checks static clients on first use: check them now, so
    // that a bad CLIENTS fails at start and not in the middle of a test.
    for (const { client_id: clientId } of CLIENTS) {
      await built.Client.find(clientId);
    }
  } catch (err) {
    fail(`bad configuration: ${err.error_description || err.message}`);
  }
  oidcCallback = built.callback();
  provider = built;
  process.stdout.write(`oidc-provider listening on ${port}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
