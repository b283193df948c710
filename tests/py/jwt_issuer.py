"""A token issuer for the identity tests: fresh keys, their JWKS, and tokens signed (or
mis-signed on purpose) as the test asks.

Reads a JSON document on stdin:
    {"tokens": [{"claims": {...}, "forge": "none" | "hs256-with-public-key" | "unknown-kid"
                 | "wrong-key" | "tampered" (optional), "tamper": {...} (claims replaced
                 after signing, with forge=tampered)}]}
Prints {"jwks": {"keys": [...]}, "public_pem": "...", "tokens": ["...", ...]}.

Real cryptography (the `cryptography` package under PyJWT), so Envoy's jwt_authn verifies
these tokens as it would any provider's.
"""

import base64
import hashlib
import hmac
import json
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KID = "k1"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def main() -> None:
    spec = json.load(sys.stdin)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": KID, "alg": "RS256", "use": "sig"})
    tokens = []
    for t in spec["tokens"]:
        claims = t["claims"]
        forge = t.get("forge")
        if forge is None:
            token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})
        elif forge == "none":
            token = segment({"alg": "none", "typ": "JWT"}) + "." + segment(claims) + "."
        elif forge == "hs256-with-public-key":
            # The key-confusion attack: HMAC keyed with the issuer's public key, which a
            # verifier that trusts the token's `alg` would check against that key.
            signing_input = segment({"alg": "HS256", "typ": "JWT", "kid": KID}) + "." + segment(claims)
            mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
            token = signing_input + "." + b64(mac)
        elif forge == "unknown-kid":
            token = jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": "k-unknown"})
        elif forge == "wrong-key":
            token = jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": KID})
        elif forge == "tampered":
            signed = jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})
            header, _, signature = signed.split(".")
            token = header + "." + segment(t["tamper"]) + "." + signature
        else:
            raise SystemExit(f"unknown forge {forge!r}")
        tokens.append(token)
    json.dump(
        {"jwks": {"keys": [jwk]}, "public_pem": public_pem.decode(), "tokens": tokens},
        sys.stdout,
    )


if __name__ == "__main__":
    main()
