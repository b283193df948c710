// A real OpenID provider for the tests: `oidc-provider` (certified OpenID Connect and OAuth 2.0
// server) on 127.0.0.1.
//
//   node oidc_issuer.mjs PORT [CONFIG_JSON]
//
// CONFIG_JSON (optional, a JSON string):
//   {"redirect_uris": ["http://127.0.0.1:8080/auth/oidc/test/callback"],
//    "accounts": {"alice": {"email": "alice@example.com", "groups": ["admins"]}},
//    "key_file": "/tmp/keys.json", "key_step": "publish"}
//
// Signing keys: without `key_file`, a new key (and kid) at every start. With it, the keys are
// kept in that file across restarts (made with one key when missing), and `key_step` rotates
// them before the provider starts: `publish` appends a new key (published in the JWKS, not
// signing yet), `sign` moves the last key first (it signs; the others stay published).
//
// Issuer `http://127.0.0.1:PORT`. Clients:
// - `mcpgw-admin` / secret `admin-secret`: confidential (client_secret_basic), authorization
//   code with PKCE (required for every client), redirect to `redirect_uris`;
// - `mcpgw-machine` / secret `machine-secret`: client_credentials;
// - `mcpgw-gateway` / secret `gateway-secret`: RFC 8693 token exchange: a `subject_token`
//   (an access token this provider issued, checked against its keys) for a JWT access token
//   whose `aud` is the `audience` asked for, `sub` the gateway, `act.sub` the gateway and
//   `subject` the subject token's `sub`. `GET /debug/exchanges` answers
//   `{"count": N, "issued": [TOKEN...]}`: the exchanges asked for and the tokens issued.
// Resource indicators (RFC 8707): a token requested with `resource=URI` is a JWT (RS256) whose
// `aud` is that URI, carrying the granted scopes.
// Login without UI: the authorization endpoint redirects to `/interaction/{uid}`; a GET there
// with `?account=NAME` logs NAME in (an unknown name is a 400); consent is granted for what
// the client asked. ID tokens carry `email` and `groups` (conformIdTokenClaims off).
//
// Prints `oidc-provider ready ISSUER` on stdout once it listens.

import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node oidc_issuer.mjs PORT [CONFIG_JSON]');
  process.exit(2);
}
const config = process.argv[3] ? JSON.parse(process.argv[3]) : {};
const accounts = config.accounts ?? {
  alice: { email: 'alice@example.com', groups: ['platform-admins'] },
  bob: { email: 'bob@example.com', groups: ['developers', 'staff'] },
  carol: { email: 'carol@example.com', groups: [] },
};
const redirectUris = config.redirect_uris ?? [`http://127.0.0.1:${port}/cb`];

// The package comes from MCPGW_NODE_MODULES when set (the tests' node_modules), else from
// beside this script.
async function load(name) {
  const dir = process.env.MCPGW_NODE_MODULES;
  if (dir) {
    const require = createRequire(join(dir, 'noop.js'));
    return import(pathToFileURL(require.resolve(name)).href);
  }
  return import(name);
}
const { default: Provider, errors } = await load('oidc-provider');
const { createLocalJWKSet, jwtVerify } = await load('jose');

const issuer = `http://127.0.0.1:${port}`;
function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: `rs-${randomUUID().slice(0, 8)}`, alg: 'RS256', use: 'sig' };
}
// A new key (and kid) at every start unless kept in `key_file`: a restart on the same port
// is a key rotation.
let keys = [newKey()];
if (config.key_file) {
  if (existsSync(config.key_file)) keys = JSON.parse(readFileSync(config.key_file, 'utf8'));
  if (config.key_step === 'publish') keys = [...keys, newKey()];
  else if (config.key_step === 'sign') keys = [keys[keys.length - 1], ...keys.slice(0, -1)];
  else if (config.key_step) throw new Error(`unknown key_step ${config.key_step}`);
  writeFileSync(config.key_file, JSON.stringify(keys));
}
const publicKeys = createLocalJWKSet({
  keys: keys.map(({ kty, n, e, kid, alg, use }) => ({ kty, n, e, kid, alg, use })),
});
// The claims an exchanged token carries beyond a client_credentials token's.
const actors = new WeakMap();
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const ANY_SCOPE = 'tools.read tools.execute resources.read prompts.read';

const provider = new Provider(issuer, {
  jwks: { keys },
  clients: [
    {
      client_id: 'mcpgw-admin',
      client_secret: 'admin-secret',
      redirect_uris: redirectUris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'mcpgw-machine',
      client_secret: 'machine-secret',
      redirect_uris: [],
      grant_types: ['client_credentials'],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'mcpgw-gateway',
      client_secret: 'gateway-secret',
      redirect_uris: [],
      grant_types: [TOKEN_EXCHANGE],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  pkce: { required: () => true },
  extraTokenClaims: async (_ctx, token) => actors.get(token),
  conformIdTokenClaims: false,
  scopes: ['openid', 'email', 'groups', ...ANY_SCOPE.split(' ')],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
  cookies: { keys: ['mcpgw-test-cookie-key'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => undefined,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resource) => ({
        scope: ANY_SCOPE,
        audience: resource,
        accessTokenTTL: 600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  findAccount: async (_ctx, id) => {
    const a = accounts[id];
    if (!a) return undefined;
    return {
      accountId: id,
      claims: async () => ({ sub: id, email: a.email, email_verified: true, groups: a.groups ?? [] }),
    };
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
});

// RFC 8693 token exchange (oidc-provider has no built-in handler: a custom grant type).
const exchanges = { count: 0, issued: [] };
provider.registerGrantType(
  TOKEN_EXCHANGE,
  async (ctx) => {
    exchanges.count += 1;
    const { params, client } = ctx.oidc;
    if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest(`subject_token_type must be ${ACCESS_TOKEN_TYPE}`);
    }
    if (!params.subject_token) throw new errors.InvalidRequest('subject_token missing');
    if (!params.audience) throw new errors.InvalidTarget('audience missing');
    let subject;
    try {
      ({ payload: subject } = await jwtVerify(params.subject_token, publicKeys, { issuer, algorithms: ['RS256'] }));
    } catch (e) {
      throw new errors.InvalidGrant(`subject_token: ${e.message}`);
    }
    const token = new provider.ClientCredentials({ client, scope: subject.scope });
    token.resourceServer = new provider.ResourceServer(params.audience, {
      scope: ANY_SCOPE,
      audience: params.audience,
      accessTokenTTL: 600,
      accessTokenFormat: 'jwt',
      jwt: { sign: { alg: 'RS256' } },
    });
    actors.set(token, { act: { sub: client.clientId }, subject: subject.sub });
    const value = await token.save();
    exchanges.issued.push(value);
    ctx.body = {
      access_token: value,
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: 'Bearer',
      expires_in: token.expiration,
      scope: token.scope || undefined,
    };
  },
  ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'scope'],
);

provider.use(async (ctx, next) => {
  if (ctx.path !== '/debug/exchanges' || ctx.method !== 'GET') return next();
  ctx.body = exchanges;
});

provider.use(async (ctx, next) => {
  const m = ctx.path.match(/^\/interaction\/([^/]+)$/);
  if (!m || ctx.method !== 'GET') return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  let result;
  if (details.prompt.name === 'login') {
    const account = ctx.query.account;
    if (!account || !accounts[account]) {
      ctx.status = 400;
      ctx.body = `unknown account ${JSON.stringify(account)}: add ?account=NAME (one of ${Object.keys(accounts).join(', ')})`;
      return;
    }
    result = { login: { accountId: account } };
  } else if (details.prompt.name === 'consent') {
    const d = details.prompt.details;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  } else {
    ctx.status = 400;
    ctx.body = `unexpected prompt ${details.prompt.name}`;
    return;
  }
  const to = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
  ctx.status = 303;
  ctx.redirect(to);
});

provider.on('server_error', (_ctx, err) => console.error('server_error', err));

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider ready ${issuer}`);
});
