// A real OpenID provider that signs users in and sends OIDC Back-Channel Logout 1.0 logout tokens:
// panva's oidc-provider (npm), with its development sign-in form and RP-initiated logout.
//
//   node tests/support/node/oidc_logout_server.mjs '{"port": N, "client_id": "...", "client_secret": "...",
//        "redirect_uri": "...", "backchannel_logout_uri": "..."}'
//
// One confidential client (authorization code flow); its ID tokens (RS256, this server's JWKS,
// found by discovery) carry `sid`, and a sign-out at /session/end posts a logout token naming
// that `sid` to `backchannel_logout_uri`. Any login/password pair signs in (the dev form).
// `GET /_test/backchannel` answers how many logout deliveries succeeded and failed.

import http from 'node:http';

import { exportJWK, generateKeyPair } from 'jose';
import Provider from 'oidc-provider';

const settings = JSON.parse(process.argv[2]);
const issuer = `http://127.0.0.1:${settings.port}`;
const deliveries = { success: 0, error: 0, errors: [] };

const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const signingJwk = { ...(await exportJWK(privateKey)), alg: 'RS256', use: 'sig', kid: 'op-rs256' };

const provider = new Provider(issuer, {
  jwks: { keys: [signingJwk] },
  clients: [{
    client_id: settings.client_id,
    client_secret: settings.client_secret,
    redirect_uris: [settings.redirect_uri],
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'client_secret_basic',
    backchannel_logout_uri: settings.backchannel_logout_uri,
    backchannel_logout_session_required: true,
  }],
  features: {
    devInteractions: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  // The grant is given without a consent screen: the tests sign in, they do not consent.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid');
    await grant.save();
    return grant;
  },
  findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
  pkce: { required: () => false },
  // oidc-provider refuses to post to special-use addresses (SSRF protection); the gateway under
  // test listens on loopback, so this test server sends without that check.
  fetch: (url, options) => {
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  cookies: { keys: ['test-only-cookie-key'] },
});

provider.on('backchannel.success', () => { deliveries.success += 1; });
provider.on('backchannel.error', (ctx, err) => {
  deliveries.error += 1;
  deliveries.errors.push(`${err && err.message}: ${err && err.cause && (err.cause.message || err.cause.code)}`);
});

const callback = provider.callback();
const server = http.createServer((req, res) => {
  if (req.url === '/_test/backchannel') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(deliveries));
    return;
  }
  callback(req, res);
});
server.listen(settings.port, '127.0.0.1', () => console.log(`oidc-provider listening on ${issuer}`));
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
