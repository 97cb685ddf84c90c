"""Log in with ZITADEL's Python library (PyPI zitadel-client) and call /whoami.

    python zitadel_login.py HOST KEY_FILE EXPECTED_USER

HOST is the issuer (http://127.0.0.1:PORT): the library reads
HOST/.well-known/openid-configuration for the token endpoint and signs its
assertion with aud = HOST. The access token it gets back must be an RFC 9068
token of the issuer (header typ at+jwt, signature by a key of the issuer's
JWKS, iss = HOST, sub = EXPECTED_USER) — not the assertion handed back, which
/whoami would accept as well — and GET /whoami with it must answer
userId = EXPECTED_USER. Prints the /whoami body; exit 0 on success, else a
one-line reason on stderr and exit 1.
"""

import base64
import json
import sys
import urllib.error
import urllib.request

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from zitadel_client import Zitadel


def b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def get(url: str, headers: dict) -> str:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (loopback)
            return resp.read().decode()
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"GET {url}: HTTP {e.code} {e.read().decode(errors='replace')[:300]}") from None


def check_access_token(token: str, host: str, expected: str) -> None:
    h, p, s = token.split(".")
    header, claims = json.loads(b64d(h)), json.loads(b64d(p))
    if header.get("typ") != "at+jwt" or header.get("alg") != "RS256":
        raise RuntimeError(f"access token header is {header}, expected typ at+jwt, alg RS256")
    discovery = json.loads(get(host + "/.well-known/openid-configuration", {}))
    jwks = json.loads(get(discovery["jwks_uri"], {}))
    jwk = next((k for k in jwks.get("keys", []) if k.get("kid") == header.get("kid")), None)
    if jwk is None:
        raise RuntimeError(f"access token kid {header.get('kid')!r} is not in the JWKS")
    pub = rsa.RSAPublicNumbers(int.from_bytes(b64d(jwk["e"]), "big"), int.from_bytes(b64d(jwk["n"]), "big")).public_key()
    pub.verify(b64d(s), f"{h}.{p}".encode(), padding.PKCS1v15(), hashes.SHA256())  # raises InvalidSignature
    if claims.get("iss") != host or claims.get("sub") != expected:
        raise RuntimeError(f"access token iss/sub are {claims.get('iss')!r}/{claims.get('sub')!r}")


def main() -> int:
    host, key_file, expected = sys.argv[1:4]
    # The SDK's documented entry for a service-account key file; it builds a
    # WebTokenAuthenticator (WebTokenAuthenticator.from_json) and runs discovery.
    zitadel = Zitadel.with_private_key(host, key_file)
    auth = zitadel.configuration.authenticator
    # The headers the SDK itself puts on every API call: it fetches the token here.
    headers = auth.get_auth_headers()
    bearer = headers.get("Authorization", "")
    if not bearer.startswith("Bearer "):
        raise RuntimeError(f"no bearer header from the library: {headers!r}")
    check_access_token(bearer[len("Bearer "):], host, expected)
    body = get(host + "/whoami", headers)
    print(body)
    user = json.loads(body).get("userId")
    if user != expected:
        raise RuntimeError(f"/whoami userId is {user!r}, expected {expected!r}")
    # A second call reuses the cached token (no second token request).
    if auth.get_auth_headers() != headers:
        raise RuntimeError("the library fetched a second token for the second call")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # one line for the summary
        cause = f" (caused by {e.__cause__!r})" if e.__cause__ else ""
        print(f"{type(e).__name__}: {e}{cause}".replace("\n", " "), file=sys.stderr)
        sys.exit(1)
