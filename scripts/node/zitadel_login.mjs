// Log in with ZITADEL's Node library (npm @zitadel/node) and call /whoami.
//
//   node zitadel_login.mjs NODE_PREFIX HOST KEY_FILE EXPECTED_USER
//
// NODE_PREFIX is the `npm install --prefix` directory holding @zitadel/node.
// HOST is the issuer (http://127.0.0.1:PORT): ServiceAccount.authenticate(HOST)
// reads HOST/.well-known/openid-configuration (openid-client Issuer.discover)
// for the token endpoint and signs its assertion with aud = HOST. The access
// token it returns must be an RFC 9068 token of the issuer (checked with jose,
// the library's own JWT dependency, against the issuer's JWKS: typ at+jwt,
// iss = HOST, sub = EXPECTED_USER) — not the assertion handed back, which
// /whoami would accept as well — and GET /whoami with it must answer
// userId = EXPECTED_USER. Prints the /whoami body; exit 0 on success, else a
// one-line reason on stderr and exit 1.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [prefix, host, keyFile, expected] = process.argv.slice(2);

async function main() {
  // 3.x ships no package "exports"/"main": the credentials live under dist/.
  const { ServiceAccount } = await import(
    pathToFileURL(join(prefix, 'node_modules/@zitadel/node/dist/credentials/index.js')).href
  );
  const { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } = createRequire(join(prefix, 'package.json'))('jose');
  const sa = ServiceAccount.fromJsonString(readFileSync(keyFile, 'utf8'));
  // The same call createServiceAccountInterceptor(HOST, sa) makes for gRPC clients.
  const token = await sa.authenticate(host);
  const header = decodeProtectedHeader(token);
  if (header.typ !== 'at+jwt' || header.alg !== 'RS256') {
    throw new Error(`access token header is ${JSON.stringify(header)}, expected typ at+jwt, alg RS256`);
  }
  const discovery = await (await fetch(`${host}/.well-known/openid-configuration`)).json();
  await jwtVerify(token, createRemoteJWKSet(new URL(discovery.jwks_uri)), {
    typ: 'at+jwt',
    issuer: host,
    subject: expected,
    algorithms: ['RS256'],
  });
  const resp = await fetch(`${host}/whoami`, { headers: { Authorization: `Bearer ${token}` } });
  const body = await resp.text();
  if (resp.status !== 200) throw new Error(`/whoami: HTTP ${resp.status} ${body.slice(0, 300)}`);
  console.log(body);
  const user = JSON.parse(body).userId;
  if (user !== expected) {
    throw new Error(`/whoami userId is ${JSON.stringify(user)}, expected ${JSON.stringify(expected)}`);
  }
}

main().catch((e) => {
  // axios errors carry the server's answer: show it on the one line.
  const data = e?.response?.data;
  const extra = data ? ` ${JSON.stringify(data).slice(0, 300)}` : '';
  console.error(`${e?.name ?? 'Error'}: ${e?.message ?? e}${extra}`.replace(/\n/g, ' '));
  process.exit(1);
});
