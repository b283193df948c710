"""Try an MCP endpoint with the official Python SDK: list its tools, optionally call one.

Usage: mcp_try.py URL [TOOL [ARGS_JSON]]

A URL ending in /sse is spoken to with the legacy HTTP+SSE transport, any other with
streamable HTTP.
"""

import json
import sys

import anyio
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client


async def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    url = sys.argv[1]
    tool = sys.argv[2] if len(sys.argv) > 2 else None
    args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    transport = sse_client(url) if url.rstrip("/").endswith("/sse") else streamable_http_client(url)
    async with transport as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            print(f"server: {init.server_info.name} (protocol {init.protocol_version})")
            tools = await session.list_tools()
            print(f"tools ({len(tools.tools)}): " + ", ".join(t.name for t in tools.tools))
            if tool:
                result = await session.call_tool(tool, args)
                for c in result.content:
                    print(f"{tool} -> {getattr(c, 'text', c)}")
                if result.is_error:
                    sys.exit(1)


if __name__ == "__main__":
    anyio.run(main)
