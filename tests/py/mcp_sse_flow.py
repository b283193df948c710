"""One MCP session over the legacy HTTP+SSE transport through the gateway, with the
official Python SDK (mcp 2.x): its `sse_client` against `/servers/{id}/sse`.

Usage: mcp_sse_flow.py SSE_URL TOOL ARGS_JSON RESOURCE_URI PROMPT PROMPT_ARGS_JSON

Runs initialize -> tools/list -> tools/call (with a progress callback) -> resources/read
-> prompts/get, then prints {"stage": "waiting"} and waits up to 30 s for a
server-initiated notifications/resources/updated (the test makes an upstream send one),
then closes the stream and prints one JSON object with what each step returned and every
HTTP exchange the SDK made.
"""

import json
import sys

import anyio
import httpx2
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client


async def main() -> None:
    url, tool, args, uri, prompt, prompt_args = sys.argv[1:7]
    exchanges: list[dict] = []
    progress: list[str] = []
    updated: list[str] = []
    got_update = anyio.Event()

    async def on_response(response: httpx2.Response) -> None:
        exchanges.append(
            {
                "method": response.request.method,
                "path": response.request.url.path,
                "status": response.status_code,
            }
        )

    def client_factory(headers=None, timeout=None, auth=None):
        return httpx2.AsyncClient(
            headers=headers,
            timeout=timeout,
            auth=auth,
            event_hooks={"response": [on_response]},
        )

    async def on_message(message) -> None:
        if isinstance(message, Exception):
            return
        m = getattr(message, "root", message)
        if getattr(m, "method", None) == "notifications/resources/updated":
            updated.append(m.params.uri)
            got_update.set()

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    out: dict = {}
    async with sse_client(url, timeout=30.0, httpx_client_factory=client_factory) as (
        read,
        write,
    ):
        async with ClientSession(read, write, message_handler=on_message) as session:
            init = await session.initialize()
            out["protocol_version"] = init.protocol_version
            out["server_name"] = init.server_info.name
            tools = await session.list_tools()
            out["tools"] = sorted(t.name for t in tools.tools)
            called = await session.call_tool(
                tool, json.loads(args), progress_callback=on_progress
            )
            out["call_is_error"] = bool(called.is_error)
            out["call_text"] = [
                c.text for c in called.content if getattr(c, "type", "") == "text"
            ]
            res = await session.read_resource(uri)
            out["resource_text"] = [getattr(c, "text", None) for c in res.contents]
            got = await session.get_prompt(prompt, json.loads(prompt_args))
            out["prompt_text"] = [getattr(m.content, "text", None) for m in got.messages]
            print(json.dumps({"stage": "waiting"}), flush=True)
            with anyio.move_on_after(30):
                await got_update.wait()
    out["progress"] = sorted(progress)
    out["updated"] = updated
    out["exchanges"] = exchanges
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    anyio.run(main)
