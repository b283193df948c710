"""One MCP session through the gateway with the official Python SDK (mcp 2.x).

Usage: mcp_client_flow.py URL TOOL ARGS_JSON RESOURCE_URI PROMPT PROMPT_ARGS_JSON

Runs initialize -> tools/list -> tools/call -> resources/read -> prompts/get, then leaves
the client context (which DELETEs the session), and prints one JSON object on stdout:
what each step returned and every HTTP exchange (method, status, content type) that the
SDK's HTTP client made, so the Rust test can assert on them.
"""

import json
import sys

import anyio
import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def main() -> None:
    url, tool, args, uri, prompt, prompt_args = sys.argv[1:7]
    exchanges: list[dict] = []

    async def on_response(response: httpx2.Response) -> None:
        exchanges.append(
            {
                "method": response.request.method,
                "status": response.status_code,
                "content_type": response.headers.get("content-type", ""),
            }
        )

    out: dict = {}
    async with httpx2.AsyncClient(
        timeout=httpx2.Timeout(30.0, read=60.0),
        event_hooks={"response": [on_response]},
    ) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                out["protocol_version"] = init.protocol_version
                out["server_name"] = init.server_info.name
                tools = await session.list_tools()
                out["tools"] = sorted(t.name for t in tools.tools)
                called = await session.call_tool(tool, json.loads(args))
                out["call_is_error"] = bool(called.is_error)
                out["call_text"] = [c.text for c in called.content if getattr(c, "type", "") == "text"]
                res = await session.read_resource(uri)
                out["resource_text"] = [getattr(c, "text", None) for c in res.contents]
                got = await session.get_prompt(prompt, json.loads(prompt_args))
                out["prompt_text"] = [
                    getattr(m.content, "text", None) for m in got.messages
                ]
    out["exchanges"] = exchanges
    print(json.dumps(out))


if __name__ == "__main__":
    anyio.run(main)
