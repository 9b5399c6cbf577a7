// Test peer: a DPoP-protected resource server (RFC 9449 §7) that verifies every request with
// `jose` (panva's JOSE library), never with code of Baton's. TEST GLUE, never part of Baton.
//
// Every request must carry `Authorization: DPoP <access token>` and one `DPoP` proof, and passes
// only when all of these hold:
//   - the access token is a JWT of ISSUER, signed by a key of its JWKS (`typ at+jwt`), unexpired;
//   - the proof verifies with the key in its own header (`jwk`), `typ dpop+jwt`, `alg ES256`;
//   - the proof's `htm` is the request method, its `htu` is `http://<Host><path>` (no query);
//   - `ath` is base64url(SHA-256(access token)); `iat` within 60 s of now; `jti` never seen before;
//   - the access token's `cnf.jkt` is the RFC 7638 thumbprint of the proof's key.
// Passed: 200 with JSON {authorization, dpop, sub, aud, act, jkt, path}. Refused: 401, a
// `WWW-Authenticate: DPoP error="invalid_dpop_proof"` (or `invalid_token`) challenge, and JSON
// {error, why}.
//
// Environment: PORT (0: any), ISSUER, JWKS_URI. Stdout: one ready line {"ready":true,"port":N}.
// GET /test/stats (not checked): {"accepted": n, "refused": n, "last_refusal": "..."}.

import * as http from 'node:http';
import * as crypto from 'node:crypto';

const toStderr = (...args) => console.error(...args);
console.log = toStderr;
console.info = toStderr;

const jose = await import('jose');

const PORT = Number(process.env.PORT || '0');
const ISSUER = process.env.ISSUER;
const JWKS_URI = process.env.JWKS_URI;
if (!ISSUER || !JWKS_URI) throw new Error('ISSUER and JWKS_URI are required');
const keys = jose.createRemoteJWKSet(new URL(JWKS_URI));

// jti -> when it may be forgotten (Unix s): a proof older than the iat window is refused anyway.
const WINDOW = 60;
const seen = new Map();
const MAX_SEEN = 100000;
let accepted = 0;
let refused = 0;
let lastRefusal = '';

class Refusal extends Error {
  constructor(error, why) {
    super(why);
    this.error = error;
  }
}

function remember(jti, now) {
  for (const [k, until] of seen) {
    if (until > now && seen.size < MAX_SEEN) break;
    seen.delete(k);
  }
  if (seen.has(jti)) throw new Refusal('invalid_dpop_proof', 'jti replayed');
  seen.set(jti, now + 2 * WINDOW);
}

async function check(req) {
  const authorization = req.headers.authorization ?? '';
  const match = /^DPoP ([A-Za-z0-9\-._~+/]+=*)$/.exec(authorization);
  if (!match) throw new Refusal('invalid_token', 'Authorization is not `DPoP <token>`');
  const token = match[1];
  const proof = req.headers.dpop;
  if (typeof proof !== 'string' || proof.includes(',')) {
    throw new Refusal('invalid_dpop_proof', 'exactly one DPoP header is required');
  }
  let verified;
  try {
    verified = await jose.jwtVerify(proof, jose.EmbeddedJWK, { typ: 'dpop+jwt', algorithms: ['ES256'] });
  } catch (e) {
    throw new Refusal('invalid_dpop_proof', `proof does not verify: ${e.code ?? e.message}`);
  }
  const { payload, protectedHeader } = verified;
  const now = Math.floor(Date.now() / 1000);
  if (payload.htm !== req.method) throw new Refusal('invalid_dpop_proof', 'htm mismatch');
  const { pathname } = new URL(req.url, 'http://x');
  const expectedHtu = `http://${req.headers.host}${pathname}`;
  if (payload.htu !== expectedHtu) {
    throw new Refusal('invalid_dpop_proof', `htu mismatch: ${payload.htu} is not ${expectedHtu}`);
  }
  if (typeof payload.iat !== 'number' || Math.abs(now - payload.iat) > WINDOW) {
    throw new Refusal('invalid_dpop_proof', 'iat not fresh');
  }
  if (payload.ath !== crypto.createHash('sha256').update(token).digest('base64url')) {
    throw new Refusal('invalid_dpop_proof', 'ath mismatch');
  }
  if (typeof payload.jti !== 'string' || !payload.jti) throw new Refusal('invalid_dpop_proof', 'no jti');
  let claims;
  try {
    ({ payload: claims } = await jose.jwtVerify(token, keys, { issuer: ISSUER, typ: 'at+jwt' }));
  } catch (e) {
    throw new Refusal('invalid_token', `access token does not verify: ${e.code ?? e.message}`);
  }
  const jkt = await jose.calculateJwkThumbprint(protectedHeader.jwk);
  if (claims.cnf?.jkt !== jkt) throw new Refusal('invalid_token', 'cnf.jkt is not the proof key');
  // Last, so a refused proof does not use up its jti.
  remember(payload.jti, now);
  return { authorization, dpop: proof, sub: claims.sub, aud: claims.aud, act: claims.act, jkt, path: pathname };
}

function send(res, status, body, extra = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...extra });
  res.end(text);
}

const server = http.createServer(async (req, res) => {
  if (req.url === '/test/stats') {
    return send(res, 200, { accepted, refused, last_refusal: lastRefusal });
  }
  try {
    const body = await check(req);
    accepted += 1;
    return send(res, 200, body);
  } catch (e) {
    refused += 1;
    const error = e instanceof Refusal ? e.error : 'invalid_token';
    lastRefusal = e.message;
    console.error('[dpop resource] refused:', e.message);
    return send(res, 401, { error, why: e.message }, { 'www-authenticate': `DPoP error="${error}", algs="ES256"` });
  }
});
await new Promise((resolve) => server.listen(PORT, '127.0.0.1', resolve));
process.stdout.write(`${JSON.stringify({ ready: true, port: server.address().port })}\n`);
process.once('SIGTERM', () => { server.close(); process.exit(0); });
