// Test peer for Baton's end-to-end suite: panva's `oidc-provider` (OpenID-certified) with an
// RFC 8693 token-exchange grant. This file is TEST GLUE, never part of Baton. The contract it
// keeps is ../README.md.
//
// What is the library's: the HTTP token endpoint, request parsing, client authentication
// (client_secret_basic and client_secret_post), error responses, the JWKS endpoint, discovery,
// and the JWT access token itself (AccessToken model, resource-server format "jwt", signed with
// the provider's keystore). What is glue: the token-exchange grant handler below (subject/actor
// token validation and policy), the Entra-style on-behalf-of grant handler, the mTLS hooks that
// hand the TLS peer certificate to the library, the key generation at start, and the /test/* endpoints.

import * as http from 'node:http';
import * as https from 'node:https';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';

// The contract wants exactly one line on stdout (the ready line). oidc-provider prints its
// notices with console.info, so everything console prints goes to stderr; the ready line is
// written with process.stdout.write. oidc-provider is imported after this, dynamically.
const toStderr = (...args) => console.error(...args);
console.log = toStderr;
console.info = toStderr;
console.debug = toStderr;

const jose = await import('jose');
const { default: Provider, errors } = await import('oidc-provider');
// The library's own DPoP proof validation (RFC 9449: signature with the embedded key, typ, htm, htu,
// iat window, nonce) and binding (replay check of the proof's jti, then cnf.jkt on the token). A
// custom grant handler is given no helpers, so they are imported from the library's files.
const { default: validateDpop } = await import('oidc-provider/lib/helpers/validate_dpop.js');
const { applyDpopBinding } = await import('oidc-provider/lib/helpers/grant_common.js');

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
// RFC 7523's JWT-bearer grant, as Microsoft Entra ID's on-behalf-of flow uses it.
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const GRANTS = [TOKEN_EXCHANGE, JWT_BEARER];
const TT_ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';
const TT_JWT = 'urn:ietf:params:oauth:token-type:jwt';
const ACCEPTED_INPUT_TYPES = new Set([TT_ACCESS_TOKEN, TT_JWT]);

function env(name, fallback) {
  const value = process.env[name];
  return value === undefined || value === '' ? fallback : value;
}

function positiveInt(name, fallback) {
  const value = Number(env(name, String(fallback)));
  if (!Number.isInteger(value) || value <= 0) {
    throw new Error(`${name} must be a positive integer`);
  }
  return value;
}

const PORT = Number(env('PORT', '0'));
const CLIENT_ID = env('CLIENT_ID', 'baton');
const CLIENT_SECRET = env('CLIENT_SECRET', 'baton-secret');
const AUDIENCES = new Set(
  env('AUDIENCES', 'https://orders.example,https://billing.example')
    .split(',').map((s) => s.trim()).filter(Boolean),
);
const TOKEN_LIFETIME = positiveInt('TOKEN_LIFETIME', 300);
// Not in the contract: which JWS algorithm the generated key uses (ES256 or RS256).
const SIGNING_ALG = env('SIGNING_ALG', 'ES256');
if (!['ES256', 'RS256'].includes(SIGNING_ALG)) {
  throw new Error('SIGNING_ALG must be ES256 or RS256');
}
// The client that "logged the user in": /test/mint issues user tokens to it. It never
// authenticates (its secret is random); it only gives minted tokens a realistic client_id.
const LOGIN_CLIENT_ID = 'test-login';
// Not in the contract: a public JWKS (JSON) for a second client, `${CLIENT_ID}-jwt`, that
// authenticates with private_key_jwt (RFC 7523); the library verifies its client assertions.
const JWT_CLIENT_JWKS = env('JWT_CLIENT_JWKS', '');
// Not in the contract: serve HTTPS with this certificate chain and key (PEM files).
const TLS_CERT_FILE = env('TLS_CERT_FILE', '');
const TLS_KEY_FILE = env('TLS_KEY_FILE', '');
// Not in the contract (needs TLS_CERT_FILE): ask every TLS client for a certificate, verify it
// against this CA bundle (PEM file), and register a third client, `${CLIENT_ID}-mtls`, that
// authenticates with RFC 8705 tls_client_auth: a verified certificate whose subject DN is
// MTLS_SUBJECT_DN (default `CN=${CLIENT_ID}-mtls`).
const TLS_CLIENT_CA_FILE = env('TLS_CLIENT_CA_FILE', '');
const MTLS_SUBJECT_DN = env('MTLS_SUBJECT_DN', `CN=${CLIENT_ID}-mtls`);
if (Boolean(TLS_CERT_FILE) !== Boolean(TLS_KEY_FILE)) {
  throw new Error('TLS_CERT_FILE and TLS_KEY_FILE go together');
}
if (TLS_CLIENT_CA_FILE && !TLS_CERT_FILE) {
  throw new Error('TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE');
}
const MINT_DEFAULT_LIFETIME = 3600;
// Not in the contract: OpenID Connect Back-Channel Logout. When set, the library's
// `backchannelLogout` feature (and, to sign a user in, its development interactions) is on, and a
// client APP_CLIENT_ID (secret APP_CLIENT_SECRET) that users sign in to by the authorization code
// flow is registered with this `backchannel_logout_uri` (and `backchannel_logout_session_required`).
// When a session ends (RP-initiated logout at /session/end), the library builds, signs and POSTs
// the logout token there. Unset: none of this exists, and other tests see the usual peer.
const BACKCHANNEL_LOGOUT_URI = env('BACKCHANNEL_LOGOUT_URI', '');
// Not in the contract: DPoP (RFC 9449) nonces. `DPOP_NONCE=1` gives the library a nonce secret (so
// it hands out `DPoP-Nonce` and accepts nonces); `DPOP_REQUIRE_NONCE=1` also makes it refuse a
// proof without one (`use_dpop_nonce`). A token-exchange request with a `DPoP` proof always gets a
// DPoP-bound token (cnf.jkt, token_type DPoP); without one, a Bearer token as before.
const DPOP_NONCE = env('DPOP_NONCE', '') === '1' || env('DPOP_REQUIRE_NONCE', '') === '1';
const DPOP_REQUIRE_NONCE = env('DPOP_REQUIRE_NONCE', '') === '1';
const APP_CLIENT_ID = env('APP_CLIENT_ID', 'test-app');
const APP_CLIENT_SECRET = env('APP_CLIENT_SECRET', 'test-app-secret');
const APP_REDIRECT_URI = 'http://127.0.0.1/callback';
const APP_POST_LOGOUT_REDIRECT_URI = 'http://127.0.0.1/logged-out';
// Not in the contract: audiences (comma-separated) whose access tokens are issued opaque (the
// library's `opaque` format, stored by the provider) rather than as JWTs, e.g. Baton's job
// audience, so that the library's introspection (RFC 7662) and revocation (RFC 7009) endpoints,
// which refuse JWTs, can judge them. Unset: every token is a JWT.
const OPAQUE_AUDIENCES = new Set(
  env('OPAQUE_AUDIENCES', '').split(',').map((s) => s.trim()).filter(Boolean),
);
// Not in the contract: identity chaining across trust domains (draft-ietf-oauth-identity-chaining).
// When set, this provider is the foreign authorization server: its jwt-bearer grant (RFC 7523),
// sent without `requested_token_use`, takes a JWT authorization grant issued by this issuer only
// (signature by the keys its discovery document names, `iss` exactly this, `aud` this provider's
// issuer, `exp` ahead, `sub` present) and issues a token for the requested audience/resource
// whose `sub` is GRANT_SUBJECT_PREFIX + the grant's `sub`, carrying the grant's `act`. Unset: the
// jwt-bearer grant is Entra's on-behalf-of only, as before.
const TRUSTED_GRANT_ISSUER = env('TRUSTED_GRANT_ISSUER', '');
const GRANT_SUBJECT_PREFIX = env('GRANT_SUBJECT_PREFIX', '');

function log(...args) {
  console.error('[oidc-provider peer]', ...args);
}

// --- signing key, generated at start ------------------------------------------------------

const { privateKey } = await jose.generateKeyPair(SIGNING_ALG, { extractable: true });
const privateJwk = await jose.exportJWK(privateKey);
privateJwk.kid = await jose.calculateJwkThumbprint(privateJwk);
privateJwk.alg = SIGNING_ALG;
privateJwk.use = 'sig';
const { d, p, q, dp, dq, qi, ...publicJwk } = privateJwk;
// The provider's own public keys (the same set it publishes at jwks_uri), used to check that a
// subject or actor token is one this provider issued.
const ownKeys = jose.createLocalJWKSet({ keys: [publicJwk] });

// --- the HTTP server: listen first, so the issuer carries the real port -------------------

const server = TLS_CERT_FILE
  ? https.createServer({
    cert: fs.readFileSync(TLS_CERT_FILE),
    key: fs.readFileSync(TLS_KEY_FILE),
    // A client without a (trusted) certificate still connects: the library then refuses a
    // tls_client_auth client with invalid_client, and the other clients and /test/* still work.
    ...(TLS_CLIENT_CA_FILE
      ? { ca: fs.readFileSync(TLS_CLIENT_CA_FILE), requestCert: true, rejectUnauthorized: false }
      : undefined),
  })
  : http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(PORT, '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = `${TLS_CERT_FILE ? 'https' : 'http'}://127.0.0.1:${port}`;

// --- the provider -------------------------------------------------------------------------

// Resource servers (RFC 8707 resource indicators / RFC 8693 audiences) this provider issues
// JWT access tokens for. Any other target is refused with invalid_target.
function resourceServerInfo(identifier, scope) {
  return {
    audience: identifier,
    // Scope policy of these test resource servers: every scope that was requested is granted.
    scope: scope ?? '',
    accessTokenTTL: TOKEN_LIFETIME,
    ...(OPAQUE_AUDIENCES.has(identifier)
      ? { accessTokenFormat: 'opaque' }
      : { accessTokenFormat: 'jwt', jwt: { sign: { alg: SIGNING_ALG } } }),
  };
}

// Extra claims (`act`, `may_act`) of a token being issued, keyed by the AccessToken instance; read back by
// the library through the `extraTokenClaims` hook when it builds the JWT payload.
const extraClaims = new WeakMap();

// features.resourceIndicators.getResourceServerInfo. Kept in a name of its own because the
// provider's resolved configuration is private (custom grant handlers get no helpers).
function getResourceServerInfo(ctx, resourceIndicator) {
  if (!AUDIENCES.has(resourceIndicator)) {
    throw new errors.InvalidTarget(`${resourceIndicator} is not an audience this client may exchange for`);
  }
  return resourceServerInfo(resourceIndicator, ctx?.oidc?.params?.scope);
}

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      // oidc-provider also accepts client_secret_post for a client registered with
      // client_secret_basic (and vice versa): both are "client secret" methods to it.
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: GRANTS,
      response_types: [],
      redirect_uris: [],
      id_token_signed_response_alg: SIGNING_ALG,
    },
    ...(JWT_CLIENT_JWKS ? [{
      client_id: `${CLIENT_ID}-jwt`,
      token_endpoint_auth_method: 'private_key_jwt',
      jwks: JSON.parse(JWT_CLIENT_JWKS),
      grant_types: GRANTS,
      response_types: [],
      redirect_uris: [],
      id_token_signed_response_alg: SIGNING_ALG,
    }] : []),
    ...(TLS_CLIENT_CA_FILE ? [{
      client_id: `${CLIENT_ID}-mtls`,
      token_endpoint_auth_method: 'tls_client_auth',
      tls_client_auth_subject_dn: MTLS_SUBJECT_DN,
      grant_types: GRANTS,
      response_types: [],
      redirect_uris: [],
      id_token_signed_response_alg: SIGNING_ALG,
    }] : []),
    ...(BACKCHANNEL_LOGOUT_URI ? [{
      client_id: APP_CLIENT_ID,
      client_secret: APP_CLIENT_SECRET,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: [APP_REDIRECT_URI],
      post_logout_redirect_uris: [APP_POST_LOGOUT_REDIRECT_URI],
      backchannel_logout_uri: BACKCHANNEL_LOGOUT_URI,
      backchannel_logout_session_required: true,
      id_token_signed_response_alg: SIGNING_ALG,
    }] : []),
    {
      client_id: LOGIN_CLIENT_ID,
      client_secret: crypto.randomBytes(32).toString('base64url'),
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [TOKEN_EXCHANGE],
      response_types: [],
      redirect_uris: [],
      id_token_signed_response_alg: SIGNING_ALG,
    },
  ],
  jwks: { keys: [privateJwk] },
  ...(TLS_CLIENT_CA_FILE ? {
    clientAuthMethods: [
      'client_secret_basic', 'client_secret_post', 'private_key_jwt', 'none', 'tls_client_auth',
    ],
  } : undefined),
  clientDefaults: {
    grant_types: [TOKEN_EXCHANGE],
    response_types: [],
    id_token_signed_response_alg: SIGNING_ALG,
  },
  features: {
    // The library's own login and consent pages, only for the back-channel logout tests: any
    // login name signs in as that user (there is no other way to get a real session).
    devInteractions: { enabled: Boolean(BACKCHANNEL_LOGOUT_URI) },
    backchannelLogout: { enabled: Boolean(BACKCHANNEL_LOGOUT_URI) },
    // RFC 7662 and RFC 7009, the library's own (they judge opaque tokens only; see OPAQUE_AUDIENCES).
    introspection: { enabled: OPAQUE_AUDIENCES.size > 0 },
    revocation: { enabled: OPAQUE_AUDIENCES.size > 0 },
    // RFC 8705 client authentication (glue: the three hooks hand the library the TLS peer
    // certificate Node verified; the library decides).
    mTLS: {
      enabled: Boolean(TLS_CLIENT_CA_FILE),
      tlsClientAuth: true,
      certificateBoundAccessTokens: false,
      getCertificate: (ctx) => ctx.socket.getPeerX509Certificate?.(),
      certificateAuthorized: (ctx) => ctx.socket.authorized === true,
      // Node prints the subject as `CN=...` lines; compared as one comma-joined string, exactly.
      certificateSubjectMatches: (ctx, property, expected) => {
        const cert = ctx.socket.getPeerX509Certificate?.();
        return property === 'tls_client_auth_subject_dn'
          && cert?.subject.split('\n').join(',') === expected;
      },
    },
    dPoP: {
      enabled: true,
      ...(DPOP_NONCE ? { nonceSecret: crypto.randomBytes(32) } : undefined),
      requireNonce: () => DPOP_REQUIRE_NONCE,
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => false,
      getResourceServerInfo,
    },
  },
  ttl: {
    AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL ?? TOKEN_LIFETIME,
  },
  // `sid`: an access token issued in a session (authorization code) names it, as the ID token
  // and the logout token do, so a session's logout can be matched to its access tokens.
  extraTokenClaims: (ctx, token) => {
    const extra = extraClaims.get(token);
    return BACKCHANNEL_LOGOUT_URI && token.sid ? { ...extra, sid: token.sid } : extra;
  },
  // The library refuses to send to a special-use address such as loopback (its SSRF protection);
  // the tests' Baton listens on loopback, so the back-channel logout URI alone, exactly as
  // configured, is sent without that check. Everything else keeps it.
  ...(BACKCHANNEL_LOGOUT_URI ? {
    fetch: (url, options) => {
      if (String(url) !== new URL(BACKCHANNEL_LOGOUT_URI).href) {
        return globalThis.fetch(url, options);
      }
      const { dispatcher, ...direct } = options;
      return globalThis.fetch(url, direct);
    },
  } : undefined),
  // JSON errors for every client, whatever its Accept header says.
  async renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
});
provider.proxy = false;

// --- RFC 8693 token exchange (glue: validation and policy; issuing is the library's) -------

// Verify a token this provider issued as an access token: signature against the provider's
// own keys, iss, typ at+jwt (RFC 9068), exp. Returns its payload or throws InvalidGrant.
async function verifyOwnAccessToken(value, what) {
  let structured = false;
  try {
    structured = Boolean(jose.decodeProtectedHeader(value));
  } catch {}
  if (!structured && OPAQUE_AUDIENCES.size > 0) {
    // An opaque access token of this provider's (OPAQUE_AUDIENCES): the library's stored token, if
    // it still is one (not expired, not revoked).
    const token = await provider.AccessToken.find(value);
    if (!token?.isValid) {
      throw new errors.InvalidGrant(`${what} is invalid: not an active access token of this provider`);
    }
    return {
      sub: token.accountId, exp: token.exp, iat: token.iat, aud: token.aud, scope: token.scope,
    };
  }
  try {
    const { payload } = await jose.jwtVerify(value, ownKeys, {
      issuer,
      typ: 'at+jwt',
      algorithms: [SIGNING_ALG],
      requiredClaims: ['sub', 'exp'],
    });
    return payload;
  } catch (cause) {
    throw new errors.InvalidGrant({ detail: `${what} is invalid: ${cause.code ?? cause.message}`, cause });
  }
}

function asList(value) {
  if (value === undefined) return [];
  return Array.isArray(value) ? value : [value];
}

async function tokenExchange(ctx) {
  const { client, params } = ctx.oidc;

  if (!params.subject_token) {
    throw new errors.InvalidRequest('missing required parameter \'subject_token\'');
  }
  if (!params.subject_token_type) {
    throw new errors.InvalidRequest('missing required parameter \'subject_token_type\'');
  }
  if (!ACCEPTED_INPUT_TYPES.has(params.subject_token_type)) {
    throw new errors.InvalidRequest('unsupported subject_token_type');
  }
  if (params.requested_token_type !== undefined
      && !ACCEPTED_INPUT_TYPES.has(params.requested_token_type)) {
    throw new errors.InvalidRequest('unsupported requested_token_type');
  }
  if (params.actor_token !== undefined && !params.actor_token_type) {
    throw new errors.InvalidRequest('actor_token_type is required with actor_token');
  }
  if (params.actor_token_type !== undefined && params.actor_token === undefined) {
    throw new errors.InvalidRequest('actor_token_type must not be sent without actor_token');
  }
  if (params.actor_token !== undefined && !ACCEPTED_INPUT_TYPES.has(params.actor_token_type)) {
    throw new errors.InvalidRequest('unsupported actor_token_type');
  }

  // The target: audience and/or resource, one distinct value.
  const resources = asList(params.resource);
  for (const resource of resources) {
    const href = URL.parse(resource)?.href;
    if (!href || href.includes('#')) {
      throw new errors.InvalidTarget('resource must be an absolute URI without a fragment');
    }
  }
  const targets = [...new Set([...asList(params.audience), ...resources])];
  if (targets.length === 0) {
    throw new errors.InvalidRequest('audience or resource is required');
  }
  if (targets.length > 1) {
    throw new errors.InvalidTarget('only one audience (or resource) may be requested');
  }
  const [target] = targets;
  const resourceServer = new provider.ResourceServer(
    target,
    await getResourceServerInfo(ctx, target, client),
  );

  // The library checks the proof, if one came (and answers use_dpop_nonce itself).
  const dPoP = await validateDpop(provider, ctx);

  const subject = await verifyOwnAccessToken(params.subject_token, 'subject_token');

  let act;
  if (params.actor_token !== undefined) {
    const actor = await verifyOwnAccessToken(params.actor_token, 'actor_token');
    // RFC 8693 4.4: a subject that names who may act for it is obeyed.
    if (subject.may_act && subject.may_act.sub !== actor.sub) {
      throw new errors.InvalidGrant("the subject token's may_act does not name this actor");
    }
    // The new actor first; earlier actors of the subject token nest inside (RFC 8693 4.1).
    act = { sub: actor.sub, ...(subject.act ? { act: subject.act } : undefined) };
  } else if (subject.act) {
    act = subject.act; // an exchange without a new actor keeps the delegation chain
  }

  const requested = params.scope ? params.scope.split(' ').filter(Boolean) : [];
  const scope = requested
    .filter(Set.prototype.has.bind(resourceServer.scopes))
    .join(' ') || undefined;
  // Baton's deferred jobs: a grant asked for with `baton:max_age:<seconds>` lives that long.
  const maxAge = requested.map((s) => /^baton:max_age:([1-9][0-9]{0,8})$/.exec(s)?.[1]).find(Boolean);
  if (maxAge) resourceServer.accessTokenTTL = Number(maxAge);

  const token = new provider.AccessToken({
    client,
    accountId: subject.sub,
    gty: TOKEN_EXCHANGE,
    scope,
    resourceServer,
  });
  if (act) extraClaims.set(token, { act });
  // Bound to the proof's key: cnf.jkt in the JWT, token_type DPoP (the library's).
  await applyDpopBinding(provider, ctx, dPoP, token);

  ctx.oidc.entity('AccessToken', token);
  const value = await token.save();

  ctx.body = {
    access_token: value,
    // A JWT asked for (an identity chaining grant): said to be one, as the draft's step 1 answers.
    issued_token_type: params.requested_token_type === TT_JWT ? TT_JWT : TT_ACCESS_TOKEN,
    token_type: token.tokenType,
    expires_in: token.expiration,
    ...(token.scope ? { scope: token.scope } : undefined),
  };
}

provider.registerGrantType(
  TOKEN_EXCHANGE,
  tokenExchange,
  [
    'subject_token', 'subject_token_type',
    'actor_token', 'actor_token_type',
    'requested_token_type',
    'audience', 'resource', 'scope',
  ],
  ['audience', 'resource'], // RFC 8693 allows these to repeat
);

// --- Microsoft Entra ID on-behalf-of (glue: the grant as Entra speaks it; issuing is the library's)
//
// grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer, assertion=<the user's token, issued to
// the calling app>, requested_token_use=on_behalf_of, scope=<resource>/.default or
// <resource>/<permission> ... (one resource). The answer is Entra's: token_type, scope,
// expires_in, ext_expires_in, access_token; no issued_token_type.

async function onBehalfOf(ctx) {
  const { client, params } = ctx.oidc;
  if (params.requested_token_use !== 'on_behalf_of') {
    throw new errors.InvalidRequest('requested_token_use must be on_behalf_of');
  }
  if (!params.assertion) {
    throw new errors.InvalidRequest('missing required parameter \'assertion\'');
  }
  const scopes = (params.scope ?? '').split(' ').filter(Boolean);
  const resources = new Set(scopes.map((s) => s.slice(0, Math.max(0, s.lastIndexOf('/')))));
  if (scopes.length === 0 || resources.size !== 1 || resources.has('')) {
    throw new errors.InvalidScope('scope must name permissions of one resource, as <resource>/<permission> or <resource>/.default');
  }
  const [resource] = resources;
  if (!AUDIENCES.has(resource)) {
    // Entra's answer for a resource it does not know (AADSTS500011).
    throw new errors.CustomOIDCProviderError('invalid_resource', `the resource principal named ${resource} was not found`);
  }
  const subject = await verifyOwnAccessToken(params.assertion, 'assertion');
  // Entra only lets the app a user token was issued to use it on the user's behalf.
  const aud = asList(subject.aud);
  if (!aud.includes(client.clientId)) {
    throw new errors.InvalidGrant('the assertion was not issued to this client');
  }
  // `.default` stands for every permission granted to the app; these test resources define none.
  const permissions = scopes
    .map((s) => s.slice(resource.length + 1))
    .filter((p) => p !== '.default');
  const resourceServer = new provider.ResourceServer(
    resource,
    resourceServerInfo(resource, permissions.join(' ')),
  );
  const token = new provider.AccessToken({
    client,
    accountId: subject.sub,
    gty: JWT_BEARER,
    scope: permissions.join(' ') || undefined,
    resourceServer,
  });
  ctx.oidc.entity('AccessToken', token);
  const value = await token.save();
  ctx.body = {
    token_type: token.tokenType,
    scope: scopes.join(' '),
    expires_in: token.expiration,
    ext_expires_in: token.expiration,
    access_token: value,
  };
}

// --- Identity chaining, the foreign authorization server's side (glue: trust in the home
// issuer's grants and the subject mapping; verifying is jose's, issuing is the library's) -------

let trustedGrantKeys;
// The home issuer's keys, found by its discovery document (once, then jose's remote JWKS keeps
// them, refetching on an unknown kid).
async function trustedKeys() {
  if (!trustedGrantKeys) {
    const response = await fetch(`${TRUSTED_GRANT_ISSUER}/.well-known/openid-configuration`);
    if (!response.ok) throw new Error(`discovery of ${TRUSTED_GRANT_ISSUER}: HTTP ${response.status}`);
    const { issuer: discovered, jwks_uri: jwksUri } = await response.json();
    if (discovered !== TRUSTED_GRANT_ISSUER) throw new Error('the discovered issuer is not TRUSTED_GRANT_ISSUER');
    trustedGrantKeys = jose.createRemoteJWKSet(new URL(jwksUri));
  }
  return trustedGrantKeys;
}

async function identityChaining(ctx) {
  const { client, params } = ctx.oidc;
  if (!params.assertion) {
    throw new errors.InvalidRequest('missing required parameter \'assertion\'');
  }
  let grant;
  try {
    ({ payload: grant } = await jose.jwtVerify(params.assertion, await trustedKeys(), {
      issuer: TRUSTED_GRANT_ISSUER,
      audience: issuer,
      requiredClaims: ['sub', 'exp'],
    }));
  } catch (cause) {
    throw new errors.InvalidGrant({ detail: `the assertion is not a grant this server trusts: ${cause.code ?? cause.message}`, cause });
  }
  const targets = [...new Set([...asList(params.audience), ...asList(params.resource)])];
  if (targets.length !== 1) {
    throw new errors.InvalidTarget('exactly one audience (or resource) is required');
  }
  const [target] = targets;
  const resourceServer = new provider.ResourceServer(target, await getResourceServerInfo(ctx, target, client));
  const requested = params.scope ? params.scope.split(' ').filter(Boolean) : [];
  const scope = requested.filter(Set.prototype.has.bind(resourceServer.scopes)).join(' ') || undefined;
  const token = new provider.AccessToken({
    client,
    accountId: `${GRANT_SUBJECT_PREFIX}${grant.sub}`,
    gty: JWT_BEARER,
    scope,
    resourceServer,
  });
  // Claims transcription: the delegation chain the home domain recorded goes on.
  if (grant.act) extraClaims.set(token, { act: grant.act });
  ctx.oidc.entity('AccessToken', token);
  const value = await token.save();
  ctx.body = {
    access_token: value,
    issued_token_type: TT_ACCESS_TOKEN,
    token_type: token.tokenType,
    expires_in: token.expiration,
    ...(token.scope ? { scope: token.scope } : undefined),
  };
}

// One grant type, two dialects: Entra's on-behalf-of names `requested_token_use`; identity
// chaining (only when TRUSTED_GRANT_ISSUER is set) does not.
provider.registerGrantType(
  JWT_BEARER,
  (ctx) => (TRUSTED_GRANT_ISSUER && ctx.oidc.params.requested_token_use === undefined
    ? identityChaining(ctx)
    : onBehalfOf(ctx)),
  ['assertion', 'requested_token_use', 'scope', 'audience', 'resource'],
  ['audience', 'resource'],
);

// Count exchange requests (either grant) that reached the token endpoint, granted or refused.
let tokenExchangeCount = 0;
let onBehalfOfCount = 0;
provider.use(async (ctx, next) => {
  try {
    await next();
  } finally {
    if (ctx.oidc?.route === 'token' && ctx.oidc.params?.grant_type === TOKEN_EXCHANGE) {
      tokenExchangeCount += 1;
    }
    if (ctx.oidc?.route === 'token' && ctx.oidc.params?.grant_type === JWT_BEARER) {
      onBehalfOfCount += 1;
    }
  }
});

provider.on('grant.success', (ctx) => {
  if (GRANTS.includes(ctx.oidc.params?.grant_type)) {
    log('grant', ctx.oidc.params.grant_type, 'to', ctx.oidc.client?.clientId);
  }
});
provider.on('grant.error', (ctx, err) => {
  log('token endpoint refused:', err.message, err.error_description ?? '', err.error_detail ?? '');
});
provider.on('backchannel.success', (ctx, client, accountId, sid) => {
  log('back-channel logout delivered to', client.clientId, 'for', accountId, 'session', sid);
});
provider.on('backchannel.error', (ctx, err, client) => {
  log('back-channel logout to', client.clientId, 'failed:', err.message);
});
provider.on('server_error', (ctx, err) => {
  log('server error:', err);
});

// --- test glue endpoints ------------------------------------------------------------------

// Mint a user access token as this provider's own user login would: the library's
// AccessToken model, JWT format, signed with the provider's keys, issued to LOGIN_CLIENT_ID.
async function mint(form) {
  const sub = form.get('sub');
  if (!sub) {
    return [400, { error: 'invalid_request', error_description: 'sub is required' }];
  }
  const aud = form.get('aud') || CLIENT_ID;
  const scope = form.get('scope') || undefined;
  let expiresIn = MINT_DEFAULT_LIFETIME;
  if (form.get('expires_in')) {
    expiresIn = Number(form.get('expires_in'));
    // Zero or negative is allowed on purpose: it mints an already expired token.
    if (!Number.isInteger(expiresIn)) {
      return [400, { error: 'invalid_request', error_description: 'expires_in must be an integer' }];
    }
  }
  const client = await provider.Client.find(LOGIN_CLIENT_ID);
  const now = Math.floor(Date.now() / 1000);
  const token = new provider.AccessToken({
    client,
    accountId: sub,
    gty: 'authorization_code',
    scope,
    iat: now,
    exp: now + expiresIn,
    resourceServer: new provider.ResourceServer(aud, resourceServerInfo(aud, scope)),
  });
  // Read back by the extraTokenClaims hook, like `act` for exchanged tokens.
  const extra = {
    ...(form.get('may_act') ? { may_act: { sub: form.get('may_act') } } : undefined),
    // The login session (OpenID Connect `sid`), which a revocation or a logout may name.
    ...(form.get('sid') ? { sid: form.get('sid') } : undefined),
  };
  // A user token bound to a DPoP key (`cnf.jkt`), as a DPoP-aware gateway would receive.
  if (form.get('jkt')) token.setThumbprint('jkt', form.get('jkt'));
  if (Object.keys(extra).length > 0) extraClaims.set(token, extra);
  const value = await token.save();
  return [200, { access_token: value, expires_in: expiresIn }];
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > 64 * 1024) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

const providerCallback = provider.callback();

server.on('request', async (req, res) => {
  const { pathname } = new URL(req.url, issuer);
  try {
    if (pathname === '/test/stats') {
      if (req.method !== 'GET') return sendJson(res, 405, { error: 'method not allowed' });
      // `jwt_bearer`: the same count as `on_behalf_of` (every jwt-bearer request), by its grant's name.
      return sendJson(res, 200, {
        token_exchange: tokenExchangeCount,
        on_behalf_of: onBehalfOfCount,
        jwt_bearer: onBehalfOfCount,
      });
    }
    if (pathname === '/test/mint') {
      if (req.method !== 'POST') return sendJson(res, 405, { error: 'method not allowed' });
      const form = new URLSearchParams(await readBody(req));
      const [status, body] = await mint(form);
      return sendJson(res, status, body);
    }
  } catch (err) {
    log('test glue error:', err);
    return sendJson(res, 500, { error: 'server_error', error_description: String(err.message) });
  }
  return providerCallback(req, res);
});

// --- ready line, shutdown -----------------------------------------------------------------

process.stdout.write(`${JSON.stringify({
  ready: true,
  issuer,
  token_endpoint: `${issuer}${provider.pathFor('token')}`,
  jwks_uri: `${issuer}${provider.pathFor('jwks')}`,
})}\n`);
log(`listening on ${issuer}; client ${CLIENT_ID}; audiences ${[...AUDIENCES].join(', ')}; alg ${SIGNING_ALG}${TLS_CLIENT_CA_FILE ? `; mTLS client ${CLIENT_ID}-mtls (${MTLS_SUBJECT_DN})` : ''}`);

function shutdown(signal) {
  log(`${signal}: shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.once('SIGTERM', () => shutdown('SIGTERM'));
process.once('SIGINT', () => shutdown('SIGINT'));
