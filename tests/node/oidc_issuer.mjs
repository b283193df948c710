// A real OpenID provider for the tests: `oidc-provider` (certified OpenID Connect and OAuth 2.0
// server) on 127.0.0.1.
//
//   node oidc_issuer.mjs PORT [CONFIG_JSON]
//
// CONFIG_JSON (optional, a JSON string):
//   {"redirect_uris": ["http://127.0.0.1:8080/auth/oidc/test/callback"],
//    "accounts": {"alice": {"email": "alice@example.com", "groups": ["admins"]}}}
//
// Issuer `http://127.0.0.1:PORT`. Clients:
// - `mcpgw-admin` / secret `admin-secret`: confidential (client_secret_basic), authorization
//   code with PKCE (required for every client), redirect to `redirect_uris`;
// - `mcpgw-machine` / secret `machine-secret`: client_credentials.
// Resource indicators (RFC 8707): a token requested with `resource=URI` is a JWT (RS256) whose
// `aud` is that URI, carrying the granted scopes.
// Login without UI: the authorization endpoint redirects to `/interaction/{uid}`; a GET there
// with `?account=NAME` logs NAME in (an unknown name is a 400); consent is granted for what
// the client asked. ID tokens carry `email` and `groups` (conformIdTokenClaims off).
//
// Prints `oidc-provider ready ISSUER` on stdout once it listens.

import { generateKeyPairSync, randomUUID } from 'node:crypto';
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
async function loadProvider() {
  const dir = process.env.MCPGW_NODE_MODULES;
  if (dir) {
    const require = createRequire(join(dir, 'noop.js'));
    return (await import(pathToFileURL(require.resolve('oidc-provider')).href)).default;
  }
  return (await import('oidc-provider')).default;
}
const Provider = await loadProvider();

const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
// A new key (and kid) at every start: a restart on the same port is a key rotation.
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: `rs-${randomUUID().slice(0, 8)}`, alg: 'RS256', use: 'sig' };
const ANY_SCOPE = 'tools.read tools.execute resources.read prompts.read';

const provider = new Provider(issuer, {
  jwks: { keys: [jwk] },
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
  ],
  pkce: { required: () => true },
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
