"""An upstream that checks how it is called, and an OAuth 2.0 token endpoint (RFC 8693).

Usage: identity_peer.py --identity-key B64URL --client-id ID --client-secret SECRET

Starts two servers on 127.0.0.1 (free ports) and prints one line each once both accept
connections: `mcp http://127.0.0.1:P/mcp` and `token http://127.0.0.1:Q/oauth/token`.

The MCP server (official Python SDK, stateless, JSON answers) has one tool, `credentials`,
which answers what the request carried as JSON text:
`{"authorization": ..., "cookie": ..., "identity": ..., "identity_valid": bool,
"identity_claims": {...} | null}`. `identity_valid` says whether `x-mcpgw-identity` is a
compact JWS HS256 that verifies with the identity key, with `exp` in the future; its claims
are returned only when it does.

The token endpoint implements the token exchange grant: HTTP Basic client authentication
with the given id and secret (else 401 `invalid_client`), `grant_type` token-exchange,
`subject_token_type` access token, a `subject_token` that is a JWT (its payload's `sub`
names the principal: this test server does not verify the subject token's signature, the
gateway's `jwt_authn` already did), else 400 `invalid_grant`. It answers
`{"access_token": "xt-<sub>-<n>", "token_type": "Bearer", "expires_in": 300,
"issued_token_type": ...}` and records every exchange: `GET /exchanges` lists
`{"sub", "audience", "resource"}` of each.
"""

import argparse
import base64
import hashlib
import hmac
import json
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_identity(jws: str | None, key: bytes) -> dict[str, Any] | None:
    """The claims of `jws` if it verifies with `key` and has not expired."""
    if not jws or jws.count(".") != 2:
        return None
    head, payload, sig = jws.split(".")
    try:
        header = json.loads(b64url_decode(head))
        if header.get("alg") != "HS256":
            return None
        want = hmac.new(key, f"{head}.{payload}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(want, b64url_decode(sig)):
            return None
        claims = json.loads(b64url_decode(payload))
    except ValueError:
        return None
    if not isinstance(claims, dict) or claims.get("exp", 0) <= time.time():
        return None
    return claims


def build(key: bytes) -> MCPServer:
    mcp = MCPServer("identity-peer", version="1.0.0")

    @mcp.tool()
    def credentials(ctx: Context) -> str:
        """What this request carried: credentials and the identity header, checked."""
        headers = getattr(ctx.request_context.request, "headers", None) or {}
        identity = headers.get("x-mcpgw-identity")
        claims = verify_identity(identity, key)
        return json.dumps(
            {
                "authorization": headers.get("authorization"),
                "cookie": headers.get("cookie"),
                "identity": identity,
                "identity_valid": claims is not None,
                "identity_claims": claims,
            }
        )

    return mcp


class TokenEndpoint(BaseHTTPRequestHandler):
    client_id = ""
    client_secret = ""
    exchanges: list[dict[str, Any]] = []
    lock = threading.Lock()

    def log_message(self, *_: Any) -> None:
        pass

    def answer(self, status: int, doc: Any) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("cache-control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/exchanges":
            with self.lock:
                self.answer(200, list(self.exchanges))
        else:
            self.answer(404, {"error": "not_found"})

    def do_POST(self) -> None:
        if urllib.parse.urlsplit(self.path).path != "/oauth/token":
            return self.answer(404, {"error": "not_found"})
        length = int(self.headers.get("content-length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
        field = lambda name: (form.get(name) or [None])[0]  # noqa: E731
        auth = self.headers.get("authorization") or ""
        expected = "Basic " + base64.b64encode(
            f"{urllib.parse.quote_plus(self.client_id)}:{urllib.parse.quote_plus(self.client_secret)}".encode()
        ).decode()
        if not hmac.compare_digest(auth, expected):
            return self.answer(401, {"error": "invalid_client"})
        if field("grant_type") != GRANT:
            return self.answer(400, {"error": "unsupported_grant_type"})
        if field("subject_token_type") != ACCESS_TOKEN:
            return self.answer(400, {"error": "invalid_request"})
        try:
            payload = json.loads(b64url_decode((field("subject_token") or "").split(".")[1]))
            sub = payload["sub"]
        except (IndexError, KeyError, ValueError, TypeError):
            return self.answer(400, {"error": "invalid_grant"})
        with self.lock:
            self.exchanges.append(
                {"sub": sub, "audience": field("audience"), "resource": field("resource")}
            )
            n = len(self.exchanges)
        self.answer(
            200,
            {
                "access_token": f"xt-{sub}-{n}",
                "issued_token_type": ACCESS_TOKEN,
                "token_type": "Bearer",
                "expires_in": 300,
            },
        )


async def serve(args: argparse.Namespace) -> None:
    TokenEndpoint.client_id = args.client_id
    TokenEndpoint.client_secret = args.client_secret
    token = ThreadingHTTPServer(("127.0.0.1", 0), TokenEndpoint)
    threading.Thread(target=token.serve_forever, daemon=True).start()
    app = build(b64url_decode(args.identity_key)).streamable_http_app(
        stateless_http=True, json_response=True
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        while not server.started:
            if server.should_exit:
                return
            await anyio.sleep(0.02)
        print(f"token http://127.0.0.1:{token.server_address[1]}/oauth/token", flush=True)
        print(f"mcp http://127.0.0.1:{port}/mcp", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identity-key", required=True, help="HS256 key, base64url")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    anyio.run(serve, parser.parse_args())


if __name__ == "__main__":
    main()
