"""Calls one tool N times through the gateway with the official Python SDK (mcp 2.x),
sending `Authorization: Bearer TOKEN` (none when TOKEN is "-").

Usage: mcp_token_calls.py URL TOKEN TOOL ARGS_JSON N

Prints one JSON object on stdout: {"connect_error": {"status": ...} | null,
"calls": [{"is_error": bool, "text": [...]} | {"status": int, "error": "..."}]}. A refused
request (401 at initialize, 429 on a call) is reported with its HTTP status, so the Rust
test can assert on what the edge answered.
"""

import json
import sys

import anyio
import httpx2
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client


def status_of(exc: BaseException):
    """The HTTP status inside an exception (or exception group) raised by the SDK."""
    stack = [exc]
    while stack:
        e = stack.pop()
        response = getattr(e, "response", None)
        if response is not None and getattr(response, "status_code", None):
            return response.status_code
        stack.extend(getattr(e, "exceptions", []) or [])
        for nested in (e.__cause__, e.__context__):
            if nested is not None:
                stack.append(nested)
    return None


async def main() -> None:
    url, token, tool, args, n = sys.argv[1:6]
    statuses: list[int] = []

    async def on_response(response: httpx2.Response) -> None:
        if response.request.method == "POST":
            statuses.append(response.status_code)

    headers = {} if token == "-" else {"authorization": f"Bearer {token}"}
    out: dict = {"connect_error": None, "calls": []}
    try:
        async with httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(30.0, read=60.0),
            event_hooks={"response": [on_response]},
        ) as http:
            async with streamable_http_client(url, http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    for _ in range(int(n)):
                        before = len(statuses)
                        try:
                            with anyio.fail_after(30):
                                r = await session.call_tool(tool, json.loads(args))
                            out["calls"].append(
                                {
                                    "is_error": bool(r.is_error),
                                    "text": [
                                        c.text
                                        for c in r.content
                                        if getattr(c, "type", "") == "text"
                                    ],
                                }
                            )
                        except Exception as e:  # noqa: BLE001 - reported to the test
                            status = statuses[-1] if len(statuses) > before else status_of(e)
                            out["calls"].append({"status": status, "error": str(e)})
    except BaseException as e:  # noqa: BLE001 - reported to the test
        if not out["calls"]:
            out["connect_error"] = {
                "status": statuses[-1] if statuses else status_of(e),
                "error": repr(e)[:500],
            }
    print(json.dumps(out))


if __name__ == "__main__":
    anyio.run(main)
