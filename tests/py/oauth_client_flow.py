"""The official Python SDK's OAuth client (mcp 2.x, client credentials) against a protected
virtual server: the first request gets 401 with `WWW-Authenticate: Bearer resource_metadata=…`,
the SDK reads the protected resource metadata (RFC 9728), discovers the authorization server
it names, gets a token for the server's resource (RFC 8707) with client_credentials, and calls
a tool.

Usage: oauth_client_flow.py URL ISSUER CLIENT_ID CLIENT_SECRET SCOPE TOOL

Prints one JSON object on stdout: the tool's text, and every HTTP exchange the SDK made
(method, URL, status) so the Rust test can assert on the discovery.
"""

import json
import sys

import anyio
import httpx2
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens = None
        self.client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens) -> None:
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info) -> None:
        self.client_info = client_info


async def main() -> None:
    url, issuer, client_id, client_secret, scope, tool = sys.argv[1:7]
    exchanges: list[dict] = []

    async def on_response(response: httpx2.Response) -> None:
        exchanges.append(
            {
                "method": response.request.method,
                "url": str(response.request.url),
                "status": response.status_code,
            }
        )

    auth = ClientCredentialsOAuthProvider(
        server_url=url,
        storage=MemoryStorage(),
        client_id=client_id,
        client_secret=client_secret,
        scope=scope,
        issuer=issuer,
    )
    out: dict = {}
    async with httpx2.AsyncClient(
        auth=auth,
        timeout=httpx2.Timeout(30.0, read=60.0),
        event_hooks={"response": [on_response]},
    ) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                result = await session.call_tool(tool, {})
                out["is_error"] = bool(result.is_error) if hasattr(result, "is_error") else bool(getattr(result, "isError", False))
                out["text"] = " ".join(
                    getattr(c, "text", "") for c in result.content
                )
    out["exchanges"] = exchanges
    print(json.dumps(out))


anyio.run(main)
