"""The matrix peer (peer_server.build, official Python SDK mcp 2.x) that also announces
catalog changes on demand, for the tests of `subscriptions/listen` through a gateway.

Usage: listen_peer.py PORT [--legacy] [--name NAME]

Serves streamable HTTP at http://127.0.0.1:PORT/mcp and prints that URL, alone on a line,
once it accepts connections. Besides the matrix peer's catalog it serves:
- `resources/subscribe` and `resources/unsubscribe` (2025 era), remembered per session;
- `POST /announce` (plain HTTP, not MCP) with a JSON body
  `{"tools": bool, "prompts": bool, "resources": bool, "updated": [uri, ...]}`: each named
  change is published on the SDK's subscription bus (every open 2026-07-28
  `subscriptions/listen` stream gets what it opted into, stamped by the SDK) and sent on the
  GET stream of every 2025-era session that has initialized (`resources/updated` only to the
  sessions subscribed to that URI). Answers what it reached:
  `{"sessions": N, "subscribed": {uri: N}, "listeners": N}` (2025 sessions initialized and
  not ended by a `DELETE`, those subscribed to each URI, open listen streams), so a test
  can tell that a gateway's session or listen is there, and gone once it is ended.

`--legacy` makes it a server that predates 2026-07-28: a request in that era (its
`MCP-Protocol-Version`, or `server/discover`) is answered `-32601 Method not found`, as a
2025-only server answers a method it does not know, so a client's discovery falls back to
`initialize`.
"""

import argparse
import json
import socket
import sys
import warnings
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import PromptsListChanged, ResourcesListChanged, ResourceUpdated, ToolsListChanged
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import peer_server


class Sessions:
    """The 2025-era sessions that initialized (by `Mcp-Session-Id`: the SDK hands each
    request its own session object), and the URIs each subscribed to."""

    def __init__(self) -> None:
        self.live: dict[str, Any] = {}
        self.uris: dict[str, set[str]] = {}

    def add(self, key: str | None, session: Any) -> None:
        if key is not None:
            self.live[key] = session

    def subscribe(self, key: str | None, session: Any, uri: str) -> None:
        if key is not None:
            self.add(key, session)
            self.uris.setdefault(key, set()).add(uri)

    def unsubscribe(self, key: str | None, uri: str) -> None:
        self.uris.get(key or "", set()).discard(uri)

    def subscribed(self, uri: str) -> list[tuple[str, Any]]:
        return [(k, s) for k, s in self.live.items() if uri in self.uris.get(k, set())]

    def drop(self, key: str) -> None:
        self.live.pop(key, None)
        self.uris.pop(key, None)


def session_key(ctx: ServerRequestContext[Any, Any]) -> str | None:
    headers = getattr(ctx.request, "headers", None)
    return headers.get("mcp-session-id") if headers is not None else None


def build(name: str) -> tuple[Any, Sessions]:
    mcp = peer_server.build(name)
    sessions = Sessions()
    low = mcp._lowlevel_server

    async def remember(ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        result = await call_next(ctx)
        if ctx.method == "notifications/initialized":
            sessions.add(session_key(ctx), ctx.session)
        return result

    low.middleware.append(remember)

    async def subscribe(ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
        sessions.subscribe(session_key(ctx), ctx.session, str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        sessions.unsubscribe(session_key(ctx), str(params.uri))
        return types.EmptyResult()

    low.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    low.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)
    return mcp, sessions


async def announce(mcp: Any, sessions: Sessions, request: Request) -> Response:
    try:
        what = json.loads(await request.body())
    except ValueError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    bus = mcp._subscriptions
    kinds = [
        ("tools", ToolsListChanged(), "send_tool_list_changed"),
        ("prompts", PromptsListChanged(), "send_prompt_list_changed"),
        ("resources", ResourcesListChanged(), "send_resource_list_changed"),
    ]
    reached = list(sessions.live.items())
    for key, event, send in kinds:
        if what.get(key):
            await bus.publish(event)
            for k, s in reached:
                await deliver(sessions, k, getattr(s, send)())
    subscribed: dict[str, int] = {}
    for uri in what.get("updated", []):
        await bus.publish(ResourceUpdated(uri=uri))
        targets = sessions.subscribed(uri)
        subscribed[uri] = len(targets)
        for k, s in targets:
            await deliver(sessions, k, s.send_resource_updated(uri))
    # The SDK's in-process bus keeps one listener per open listen stream.
    listeners = len(getattr(bus, "_listeners", {}))
    return JSONResponse({"sessions": len(reached), "subscribed": subscribed, "listeners": listeners})


async def deliver(sessions: Sessions, key: str, sending: Any) -> None:
    """Sends one notification on a session's GET stream; forgets a session that is gone."""
    try:
        await sending
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        sessions.drop(key)


def forget_deleted(app: Any, sessions: Sessions) -> Any:
    """`app`, forgetting a 2025 session its client ends with `DELETE`."""

    async def tracked(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "DELETE" and scope["path"] == "/mcp":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            if (key := headers.get("mcp-session-id")) is not None:
                sessions.drop(key)
        await app(scope, receive, send)

    return tracked


def legacy_only(app: Any) -> Any:
    """`app`, refusing every 2026-07-28 request as a server that predates the era does."""

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/mcp":
            await app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = None
        method = decoded.get("method") if isinstance(decoded, dict) else None
        modern = headers.get("mcp-protocol-version") in MODERN_PROTOCOL_VERSIONS or method == "server/discover"
        if modern and isinstance(decoded, dict) and "id" in decoded:
            error = {"code": types.METHOD_NOT_FOUND, "message": "Method not found"}
            await JSONResponse({"jsonrpc": "2.0", "id": decoded["id"], "error": error})(scope, receive, send)
            return

        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await app(scope, replay, send)

    return guarded


async def serve(args: argparse.Namespace) -> None:
    mcp, sessions = build(args.name)
    app = mcp.streamable_http_app()

    async def on_announce(request: Request) -> Response:
        return await announce(mcp, sessions, request)

    app.router.routes.append(Route("/announce", on_announce, methods=["POST"]))
    served = forget_deleted(legacy_only(app) if args.legacy else app, sessions)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(served, log_level="warning", lifespan="on"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        while not server.started:
            if server.should_exit:
                return
            await anyio.sleep(0.02)
        print(f"http://127.0.0.1:{port}/mcp", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--legacy", action="store_true", help="speak the 2025 era only")
    parser.add_argument("--name", default="mcpgw-listen-peer", help="server name (serverInfo)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", MCPDeprecationWarning)
    try:
        anyio.run(serve, args)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
