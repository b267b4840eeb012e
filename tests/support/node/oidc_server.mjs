// A real OAuth 2.0 authorization server for the tests: panva's oidc-provider (npm), with the
// RFC 8693 token-exchange grant registered through its `registerGrantType` API.
//
//   node tests/support/node/oidc_server.mjs '{"port": N, "subject": {...}, "clients": [...], "resources": {...}}'
//
// - `subject`: who issues the tokens users present (`issuer`, `jwks_uri`, `audience`); a
//   subject_token is accepted only when it verifies against that JWKS (jose, oidc-provider's own
//   JOSE library) with that issuer and audience.
// - `clients`: confidential clients allowed the grant (`client_secret_basic`).
// - `resources`: resource indicator -> {scope, ttl}; the issued access token is a JWT signed by this
//   server (ES256, its own JWKS at /jwks), `aud` = the resource, `sub` = the subject's `sub`.
// `GET /_test/exchanges` answers how many tokens were issued (to see the gateway's cache at work).

import http from 'node:http';

import { createRemoteJWKSet, exportJWK, generateKeyPair, jwtVerify } from 'jose';
import Provider, { errors } from 'oidc-provider';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

const settings = JSON.parse(process.argv[2]);
const issuer = `http://127.0.0.1:${settings.port}`;
const subjectKeys = createRemoteJWKSet(new URL(settings.subject.jwks_uri));
let exchanges = 0;

const { privateKey } = await generateKeyPair('ES256', { extractable: true });
const signingJwk = { ...(await exportJWK(privateKey)), alg: 'ES256', use: 'sig', kid: 'as-es256' };

const provider = new Provider(issuer, {
  jwks: { keys: [signingJwk] },
  clients: settings.clients.map(({ client_id, client_secret }) => ({
    client_id,
    client_secret,
    grant_types: [TOKEN_EXCHANGE],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'ES256',
  })),
  features: {
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => false,
      getResourceServerInfo(ctx, resource) {
        const known = settings.resources[resource];
        if (!known) throw new errors.InvalidTarget('unknown resource');
        return {
          audience: resource,
          scope: known.scope,
          accessTokenTTL: known.ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  cookies: { keys: ['test-only-cookie-key'] },
});

// RFC 8693 §2.1: subject_token, subject_token_type, resource, audience, scope.
provider.registerGrantType(
  TOKEN_EXCHANGE,
  async (ctx) => {
    const { params, client } = ctx.oidc;
    if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest('unsupported subject_token_type');
    }
    let subject;
    try {
      ({ payload: subject } = await jwtVerify(params.subject_token, subjectKeys, {
        issuer: settings.subject.issuer,
        audience: settings.subject.audience,
      }));
    } catch {
      throw new errors.InvalidGrant('subject_token is not valid');
    }
    const resource = Array.isArray(params.resource) ? params.resource[0] : params.resource;
    if (!resource || params.audience !== resource) {
      throw new errors.InvalidTarget('resource and audience must name the same resource');
    }
    const known = settings.resources[resource];
    if (!known) throw new errors.InvalidTarget('unknown resource');
    const resourceServer = new provider.ResourceServer(resource, {
      audience: resource,
      scope: known.scope,
      accessTokenTTL: known.ttl,
      accessTokenFormat: 'jwt',
      jwt: { sign: { alg: 'ES256' } },
    });
    const granted = (params.scope || '').split(' ').filter((s) => resourceServer.scopes.has(s));
    const token = new provider.AccessToken({
      accountId: subject.sub,
      client,
      gty: 'token_exchange',
      scope: granted.join(' ') || undefined,
      resourceServer,
    });
    const value = await token.save();
    exchanges += 1;
    ctx.body = {
      access_token: value,
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: 'Bearer',
      expires_in: token.expiration,
      scope: token.scope,
    };
  },
  ['subject_token', 'subject_token_type', 'resource', 'audience', 'scope', 'requested_token_type'],
  ['resource', 'audience'],
);

const app = provider.callback();
http
  .createServer((req, res) => {
    if (req.url === '/_test/exchanges') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ exchanges }));
      return;
    }
    app(req, res);
  })
  .listen(settings.port, '127.0.0.1');
