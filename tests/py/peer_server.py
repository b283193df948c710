"""An MCP server for the test matrix, written with the official Python SDK (mcp 2.x).

Usage: peer_server.py PORT [--stateless] [--json-response] [--name NAME] [--era both|legacy|modern]

Serves streamable HTTP at http://127.0.0.1:PORT/mcp (PORT 0 picks a free port) and prints
that URL on stdout, alone on a line, once it accepts connections. One endpoint speaks both
protocol eras: the SDK routes a request whose `MCP-Protocol-Version` names 2026-07-28 to its
stateless per-request entry, and everything else to the session-era transport (stateful,
with `Mcp-Session-Id`, unless `--stateless`; server-to-client requests need a session there,
so the sampling, elicitation and roots tools need the default mode in the 2025 era).
`--era legacy` or `--era modern` makes it a server of one era only, refusing the other as
such a server does: a session-era server answers a request naming 2026-07-28 in
`MCP-Protocol-Version` with HTTP 400 (an unsupported version, as the 2025 SDKs' transports
do); a stateless-era server answers any POST without a 2026-07-28 `MCP-Protocol-Version`
(`initialize` included) with HTTP 400 and -32022 naming the versions it speaks, and GET and
DELETE with 405.

What it serves, the same in both eras (peer_client.py's scenarios use all of it):
- tools `echo`, `add`; `log_levels` (sends `notifications/message` at debug, info, warning
  and error during the call, filtered by `logging/setLevel` in the 2025 era and by the
  request's `_meta` log-level opt-in in 2026-07-28); `sample` (`sampling/createMessage`),
  `ask_profile` (form elicitation), `open_url` (URL elicitation), `list_roots`
  (`roots/list`) and `count` (progress notifications);
- resource `peer://greeting`, resource template `peer://items/{name}` with completion of
  `name`; prompt `greet` with an argument `name` and its completion.

Server-to-client requests: in the 2025 era they are real JSON-RPC requests sent mid-call on
the call's SSE stream; in 2026-07-28 the tool answers `input_required` (`inputRequests` plus
a sealed `requestState`) and completes when the client retries with `inputResponses`. The
SDK's resolvers (`Resolve(...)` with `Sample`, `Elicit`, `ListRoots`) pick the transport from
the negotiated version; URL-mode elicitation has no resolver, so `open_url` does the same by
hand (`ctx.elicit_url` in the 2025 era, an `InputRequiredResult` in 2026-07-28).
"""

import argparse
import json
import socket
import sys
import warnings
from typing import Annotated, Any, get_args

import anyio
import mcp_types as types
import uvicorn
from mcp.server.connection import allowed_log_levels
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    Elicit,
    ElicitationResult,
    ListRoots,
    MCPServer,
    Resolve,
    Sample,
)
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel

ITEMS = ["apple", "apricot", "banana", "blueberry", "cherry"]
NAMES = ["Ada", "Alan", "Barbara", "Grace"]
LEVELS: list[types.LoggingLevel] = ["debug", "info", "warning", "error"]
# Severity-ascending, as the `LoggingLevel` literal declares them.
ALL_LEVELS: tuple[types.LoggingLevel, ...] = get_args(types.LoggingLevel)
URL_TO_OPEN = "https://peer.example/authorize?step=1"
URL_ELICITATION_ID = "peer-url-1"


class Profile(BaseModel):
    """What `ask_profile` asks the user for."""

    name: str
    age: int


def is_modern(ctx: Context) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def build(name: str) -> MCPServer:
    mcp = MCPServer(name, version="1.0.0", instructions="The mcpgw test matrix peer.")
    # The 2025 era's logging/setLevel, remembered per session (without one, as in stateless
    # mode, it has nothing to last in). MCPServer registers no handler for it, so without
    # this the server would neither advertise logging nor serve setLevel (-32601); the
    # low-level server is the only place to add one.
    session_levels: dict[str, types.LoggingLevel] = {}

    def session_key(ctx: ServerRequestContext[Any, Any]) -> str | None:
        headers = getattr(ctx.request, "headers", None)
        return headers.get("mcp-session-id") if headers is not None else None

    async def set_level(ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> types.EmptyResult:
        if (key := session_key(ctx)) is not None:
            session_levels[key] = params.level
        return types.EmptyResult()

    mcp._lowlevel_server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)

    @mcp.tool()
    def echo(message: str) -> str:
        """Returns the message unchanged."""
        return message

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    @mcp.tool()
    async def log_levels(ctx: Context) -> str:
        """Logs one message at each of debug, info, warning and error, then says how many it sent."""
        if is_modern(ctx):
            # Delivery is the request's own `_meta` opt-in; the SDK drops the rest anyway.
            allowed = allowed_log_levels(ctx.request_context.protocol_version, ctx.request_context.meta)
            sent = [lvl for lvl in LEVELS if lvl in allowed]
        else:
            floor = session_levels.get(session_key(ctx.request_context) or "", "debug")
            sent = [lvl for lvl in LEVELS if ALL_LEVELS.index(lvl) >= ALL_LEVELS.index(floor)]
        for lvl in sent:
            await ctx.log(lvl, f"{lvl} message from the peer", logger_name="peer")
        return f"sent {len(sent)} log messages"

    def sampled_haiku(topic: str) -> Sample:
        return Sample(
            [types.SamplingMessage(role="user", content=types.TextContent(type="text", text=f"A haiku about {topic}"))],
            max_tokens=64,
            system_prompt="You write haiku.",
        )

    @mcp.tool()
    def sample(topic: str, reply: Annotated[types.CreateMessageResult, Resolve(sampled_haiku)]) -> str:
        """Asks the client's model for a haiku (sampling) and returns what it wrote."""
        content = reply.content
        text = content.text if isinstance(content, types.TextContent) else str(content)
        return f"{reply.model} wrote: {text}"

    def profile_question() -> Elicit[Profile]:
        return Elicit("Who are you?", Profile)

    @mcp.tool()
    def ask_profile(answer: Annotated[ElicitationResult[Profile], Resolve(profile_question)]) -> str:
        """Asks the user for a name and an age (form elicitation)."""
        if isinstance(answer, AcceptedElicitation):
            return f"{answer.data.name} is {answer.data.age}"
        return f"elicitation {answer.action}"

    @mcp.tool(structured_output=False)
    async def open_url(ctx: Context) -> Any:
        """Asks the user to open a URL (URL-mode elicitation) and reports what they chose."""
        caps = ctx.client_capabilities
        if caps is None or caps.elicitation is None or caps.elicitation.url is None:
            required = types.ClientCapabilities(
                elicitation=types.ElicitationCapability(url=types.UrlElicitationCapability())
            )
            raise MCPError(
                code=types.MISSING_REQUIRED_CLIENT_CAPABILITY,
                message="Client did not declare URL elicitation",
                data=types.MissingRequiredClientCapabilityErrorData(required_capabilities=required).model_dump(
                    by_alias=True, mode="json", exclude_none=True
                ),
            )
        if not is_modern(ctx):
            result = await ctx.elicit_url("Please authorize the peer", URL_TO_OPEN, URL_ELICITATION_ID)
            return f"url elicitation {result.action}"
        answer = (ctx.input_responses or {}).get("open_url")
        if isinstance(answer, types.ElicitResult) and ctx.request_state == "asked-url":
            return f"url elicitation {answer.action}"
        return types.InputRequiredResult(
            input_requests={
                "open_url": types.ElicitRequest(
                    params=types.ElicitRequestURLParams(message="Please authorize the peer", url=URL_TO_OPEN)
                )
            },
            request_state="asked-url",
        )

    def roots_request() -> ListRoots:
        return ListRoots()

    @mcp.tool()
    def list_roots(roots: Annotated[types.ListRootsResult, Resolve(roots_request)]) -> str:
        """Asks the client for its roots and lists them."""
        return ", ".join(f"{r.name}={r.uri}" for r in roots.roots)

    @mcp.tool()
    async def count(steps: int, ctx: Context) -> str:
        """Reports progress 1..steps of steps, then says how many steps it reported."""
        for i in range(1, steps + 1):
            await ctx.report_progress(i, steps, f"step {i} of {steps}")
        return f"counted {steps} steps"

    @mcp.resource("peer://greeting", name="greeting", description="A fixed greeting", mime_type="text/plain")
    def greeting() -> str:
        return "Hello from the peer"

    @mcp.resource("peer://items/{name}", name="item", description="One item by name", mime_type="text/plain")
    def item(name: str) -> str:
        return f"item {name}"

    @mcp.prompt(description="Greets someone by name")
    def greet(name: str) -> str:
        return f"Hello, {name}! Nice to meet you."

    @mcp.completion()
    async def complete(
        ref: types.PromptReference | types.ResourceTemplateReference,
        argument: types.CompletionArgument,
        context: types.CompletionContext | None,
    ) -> types.Completion | None:
        if isinstance(ref, types.PromptReference) and ref.name == "greet" and argument.name == "name":
            pool = NAMES
        elif isinstance(ref, types.ResourceTemplateReference) and ref.uri == "peer://items/{name}":
            pool = ITEMS
        else:
            return None
        values = [v for v in pool if v.lower().startswith(argument.value.lower())]
        return types.Completion(values=values, total=len(values), has_more=False)

    return mcp


def one_era(app: Any, era: str) -> Any:
    """`app` as a server of `era` only (`legacy` or `modern`); see the module docstring."""

    async def gated(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        version = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"mcp-protocol-version"),
            None,
        )
        modern = version in MODERN_PROTOCOL_VERSIONS
        if era == "legacy" and modern:
            status, error = 400, {
                "code": -32600,
                "message": f"Bad Request: Unsupported protocol version: {version}",
            }
        elif era == "modern" and not modern and scope["method"] != "POST":
            status, error = 405, {"code": -32600, "message": "Method Not Allowed"}
        elif era == "modern" and not modern:
            status, error = 400, {
                "code": -32022,
                "message": "Unsupported protocol version",
                "data": {"supported": list(MODERN_PROTOCOL_VERSIONS), "requested": version},
            }
        else:
            await app(scope, receive, send)
            return
        body = json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return gated


async def serve(args: argparse.Namespace) -> None:
    mcp = build(args.name)
    app = mcp.streamable_http_app(stateless_http=args.stateless, json_response=args.json_response)
    if args.era != "both":
        app = one_era(app, args.era)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
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
    parser.add_argument("--stateless", action="store_true", help="no sessions in the 2025 era")
    parser.add_argument("--json-response", action="store_true", help="answer JSON instead of SSE")
    parser.add_argument("--name", default="mcpgw-peer", help="server name (serverInfo)")
    parser.add_argument(
        "--era",
        choices=["both", "legacy", "modern"],
        default="both",
        help="the protocol eras it speaks (legacy: 2025 only; modern: 2026-07-28 only)",
    )
    args = parser.parse_args()
    # Logging, sampling and roots are deprecated in 2026-07-28; the peer serves them on purpose.
    warnings.simplefilter("ignore", MCPDeprecationWarning)
    try:
        anyio.run(serve, args)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
