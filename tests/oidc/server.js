#!/usr/bin/env node
// Loopback OpenID Connect provider for tests (oauth2-mock-server underneath).
//
//   npm ci --prefix tests/oidc            # once
//   node tests/oidc/server.js [PORT]      # or OIDC_MOCK_PORT=PORT; 0 (default) = any free port
//
// Listens on 127.0.0.1 only. When ready it prints ONE line to stdout:
//   OIDC_MOCK_READY http://127.0.0.1:<port>
// (the issuer; discovery document at <issuer>/.well-known/openid-configuration).
// Everything else (request log, errors) goes to stderr.
//
// Who signs in is chosen by the browser, per browser context: before starting the
// sign-in, set the cookie `mock_user=<e-mail>` (URL-encoded) on the issuer's origin;
// optional `mock_user_name=<display name>`. /authorize reads it, remembers
// code -> user, and /token puts `sub`, `email`, `email_verified`, `name` into the
// id token (and the access token); /userinfo answers the same claims for that access
// token. Without the cookie, /authorize may use the standard `login_hint` parameter;
// with neither it answers 400 with an explanation (never a default user).
// `sub` is "mock|<e-mail>" (stable, unique per e-mail).
//
// Optional env: OIDC_MOCK_CLIENT_ID / OIDC_MOCK_CLIENT_SECRET — when set, /token
// rejects other client credentials (HTTP Basic or form body) with 401 invalid_client.
// --watch-stdin (or OIDC_MOCK_WATCH_STDIN=1): exit when stdin closes, so a test
// runner that dies cannot leave the provider behind.
// Exits on SIGTERM / SIGINT.

import { createServer } from 'node:http';
import { OAuth2Issuer, OAuth2Service } from 'oauth2-mock-server';

const HOST = '127.0.0.1';
const USER_COOKIE = 'mock_user';
const NAME_COOKIE = 'mock_user_name';

const args = process.argv.slice(2);
const watchStdin = args.includes('--watch-stdin') || process.env.OIDC_MOCK_WATCH_STDIN === '1';
const portArg = args.find((a) => !a.startsWith('--')) ?? process.env.OIDC_MOCK_PORT ?? '0';
const port = Number(portArg);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`server.js: bad port ${JSON.stringify(portArg)}`);
  process.exit(2);
}
const expectedClientId = process.env.OIDC_MOCK_CLIENT_ID || undefined;
const expectedClientSecret = process.env.OIDC_MOCK_CLIENT_SECRET || undefined;

const log = (...parts) => console.error('[oidc-mock]', ...parts);

function parseCookies(header) {
  const out = {};
  for (const part of (header ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i < 0) continue;
    const key = part.slice(0, i).trim();
    let value = part.slice(i + 1).trim();
    if (value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1);
    try {
      out[key] = decodeURIComponent(value);
    } catch {
      out[key] = value;
    }
  }
  return out;
}

function displayName(email) {
  const local = email.split('@')[0] ?? email;
  return local.charAt(0).toUpperCase() + local.slice(1);
}

function userFromAuthorizeRequest(req, url) {
  const cookies = parseCookies(req.headers.cookie);
  const email = cookies[USER_COOKIE] || url.searchParams.get('login_hint') || '';
  if (!email.includes('@')) return null;
  const name = cookies[NAME_COOKIE] || displayName(email);
  return { sub: `mock|${email}`, email, email_verified: true, name };
}

function clientCredentials(req) {
  const auth = req.headers.authorization ?? '';
  if (auth.startsWith('Basic ')) {
    const decoded = Buffer.from(auth.slice(6), 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    // RFC 6749 2.3.1: both parts are form-urlencoded inside Basic auth
    const dec = (s) => decodeURIComponent(s.replace(/\+/g, ' '));
    return { id: dec(decoded.slice(0, i)), secret: dec(decoded.slice(i + 1)) };
  }
  return { id: req.body?.client_id, secret: req.body?.client_secret };
}

const issuer = new OAuth2Issuer();
const service = new OAuth2Service(issuer);
await issuer.keys.generate('RS256');

// Per-sign-in state (a test run signs in a handful of times; nothing is evicted).
const userByCode = new Map(); // authorization code -> user (single use)
const userByAccessToken = new Map(); // access token -> user (for /userinfo)
const userByRefreshToken = new Map(); // refresh token -> user (refresh_token grant)

function userForTokenRequest(req) {
  const body = req.body ?? {};
  if (body.grant_type === 'authorization_code') return userByCode.get(body.code);
  if (body.grant_type === 'refresh_token') return userByRefreshToken.get(body.refresh_token);
  return undefined;
}

service.on('beforeAuthorizeRedirect', (redirect, req) => {
  const code = redirect.url.searchParams.get('code');
  if (code && req.mockUser) {
    userByCode.set(code, req.mockUser);
    log(`authorize: ${req.mockUser.email}`);
  }
});

service.on('beforeTokenSigning', (token, req) => {
  const user = userForTokenRequest(req);
  if (user) Object.assign(token.payload, user);
});

service.on('beforeResponse', (response, req) => {
  const body = req.body ?? {};
  if (expectedClientId !== undefined || expectedClientSecret !== undefined) {
    const { id, secret } = clientCredentials(req);
    const idOk = expectedClientId === undefined || id === expectedClientId;
    const secretOk = expectedClientSecret === undefined || secret === expectedClientSecret;
    if (!idOk || !secretOk) {
      log(`token: invalid client ${JSON.stringify(id)}`);
      response.statusCode = 401;
      response.body = { error: 'invalid_client', error_description: 'unknown client_id or wrong client_secret' };
      return;
    }
  }
  if (body.grant_type !== 'authorization_code' && body.grant_type !== 'refresh_token') return;
  const user = userForTokenRequest(req);
  if (body.grant_type === 'authorization_code') userByCode.delete(body.code);
  if (!user) {
    log(`token: unknown or reused ${body.grant_type === 'refresh_token' ? 'refresh token' : 'code'}`);
    response.statusCode = 400;
    response.body = { error: 'invalid_grant', error_description: 'unknown, expired or already used grant' };
    return;
  }
  if (response.statusCode === 200) {
    userByAccessToken.set(response.body.access_token, user);
    if (response.body.refresh_token) userByRefreshToken.set(response.body.refresh_token, user);
    log(`token: issued for ${user.email}`);
  }
});

service.on('beforeUserinfo', (response, req) => {
  const auth = req.headers.authorization ?? '';
  const user = auth.startsWith('Bearer ') ? userByAccessToken.get(auth.slice(7)) : undefined;
  if (user) {
    response.body = { ...user };
  } else {
    response.statusCode = 401;
    response.body = { error: 'invalid_token', error_description: 'unknown access token' };
  }
});

const handler = service.requestHandler;
const server = createServer((req, res) => {
  const url = new URL(req.url ?? '/', `http://${HOST}`);
  if (req.method === 'GET' && url.pathname === '/authorize') {
    const user = userFromAuthorizeRequest(req, url);
    if (!user) {
      log('authorize: refused, no mock_user cookie / login_hint');
      res.writeHead(400, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(
        `oidc-mock: no user chosen. Set the cookie ${USER_COOKIE}=<e-mail> on ${issuer.url} ` +
          '(tests/oidc_provider.py: provider.sign_in_as(context, email)) or pass login_hint.\n',
      );
      return;
    }
    req.mockUser = user;
  }
  handler(req, res);
});

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, HOST, resolve);
});
// Set the issuer explicitly: oauth2-mock-server's own start() would advertise
// http://localhost:<port> for 127.0.0.1, and cookies for 127.0.0.1 do not go to localhost.
issuer.url = `http://${HOST}:${server.address().port}`;

let stopping = false;
function stop(why) {
  if (stopping) return;
  stopping = true;
  log(`stopping (${why})`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
if (watchStdin) {
  process.stdin.on('end', () => stop('stdin closed'));
  process.stdin.on('error', () => stop('stdin error'));
  process.stdin.resume();
}

process.stdout.write(`OIDC_MOCK_READY ${issuer.url}\n`);
