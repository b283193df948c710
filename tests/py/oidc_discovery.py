"""A minimal OpenID provider for the key-fetching tests: OpenID Connect discovery at
`{issuer}/.well-known/openid-configuration` and its `jwks_uri`, with a fresh RSA key
(plus an encryption key and a symmetric key, which the control plane must leave out).

Usage: oidc_discovery.py  (serves on 127.0.0.1, an ephemeral port, until killed)
Prints one line first: {"issuer": "http://127.0.0.1:PORT/realms/test", "kid": "..."}.
"""

import base64
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives.asymmetric import rsa


def b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def main() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    numbers = key.public_numbers()
    kid = "discovered-1"
    jwks = {
        "keys": [
            {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
             "n": b64(numbers.n), "e": b64(numbers.e)},
            {"kty": "RSA", "kid": "enc-1", "use": "enc",
             "n": b64(numbers.n), "e": b64(numbers.e)},
            {"kty": "oct", "kid": "hs", "k": "c2VjcmV0"},
        ]
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    issuer = f"{base}/realms/test"
    docs = {
        "/realms/test/.well-known/openid-configuration": {
            "issuer": issuer,
            "jwks_uri": f"{base}/realms/test/certs",
            "id_token_signing_alg_values_supported": ["RS256"],
        },
        "/realms/test/certs": jwks,
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            doc = docs.get(self.path)
            body = json.dumps(doc).encode() if doc is not None else b"{}"
            self.send_response(200 if doc is not None else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server.RequestHandlerClass = Handler
    print(json.dumps({"issuer": issuer, "kid": kid}), flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
