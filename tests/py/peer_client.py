"""Runs the test matrix's client scenarios against one MCP endpoint with the official Python
SDK (mcp 2.x) and prints one JSON document of normalized results on stdout.

Usage: peer_client.py URL --era {2025-11-25,2026-07-28} [--scenario NAME]... [--prefix P]
                      [--timeout SECONDS] [--dump-catalog]

The server is expected to be tests/py/peer_server.py, directly or behind a gateway. Each
scenario opens its own client (so one that breaks its connection cannot spoil the next):
`--era 2025-11-25` runs the initialize handshake (`Client(mode="legacy")`, which offers
2025-11-25), `--era 2026-07-28` pins the stateless era without a probe
(`Client(mode="2026-07-28")`: every request carries the version, client info and
capabilities in `_meta` and the `MCP-Protocol-Version`/`Mcp-Method`/`Mcp-Name` headers). The
`connect` scenario calls `server/discover` explicitly in the 2026 era.

`--prefix P` (also spelt `--strip-prefix`) is for a gateway that names tools and prompts
`P{name}` (`{gateway}__` by default in mcpgw): calls use the prefixed names, and the prefix
is stripped from every name in the output, so the document compares equal to one taken
directly against the server. Lists are sorted; session ids, request ids and the server's
own name never appear in the output.

Output: {"era", "scenarios": {NAME: {"ok": true, "result": ..., "inputRequiredRetries": N} |
{"ok": false, "error": {"code", "message", "type"}, "observed": {...}}}}. A failing scenario
(a JSON-RPC error, an `isError` tool result, a timeout, a broken connection) is reported with
what the callbacks had seen so far, never fatal. `inputRequiredRetries` counts the requests
that answered an `input_required` result (the 2026 era's server-to-client requests).

`--dump-catalog` prints the four lists as the server sent them instead (raw items, no
normalization), for building a gateway catalog from them.
"""

import argparse
import json
import sys
import traceback
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp.client.client import Client
from mcp.client.session import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

ERAS = ("2025-11-25", "2026-07-28")
SCENARIOS = (
    "connect",
    "catalog",
    "tools",
    "logging",
    "sampling",
    "elicitation-form",
    "elicitation-url",
    "roots",
    "progress",
    "resources",
    "prompts",
    "completion",
)
ROOTS = [types.Root(uri="file:///srv/peer-root", name="peer-root")]
PROFILE = {"name": "Ada", "age": 36}
# How long a scenario waits for notifications the server said it sent: they are delivered
# on their own tasks and may trail the result they preceded on the wire.
NOTIFICATION_GRACE = 5.0


class ScenarioFailed(Exception):
    """A scenario outcome that is not a JSON-RPC error, e.g. an `isError` tool result."""


def dump(model: Any) -> Any:
    """A pydantic model (or a plain value) as wire JSON, without `_meta`."""
    if hasattr(model, "model_dump"):
        value = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    else:
        value = model
    if isinstance(value, dict):
        value.pop("_meta", None)
        # A cache lifetime is the answering party's choice (a gateway may pick its own);
        # `cacheScope` stays: nobody may widen it.
        value.pop("ttlMs", None)
    return value


class Recorder:
    """What the client's callbacks saw and answered during one scenario."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self.progress: list[dict[str, Any]] = []
        # POSTs that answered an `input_required` result (the 2026 era's retries).
        self.retries = 0
        self.changed = anyio.Event()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, what: list[Any], count: int) -> None:
        """Waits until `what` holds `count` items, or NOTIFICATION_GRACE passes."""
        with anyio.move_on_after(NOTIFICATION_GRACE):
            while len(what) < count:
                await self.changed.wait()

    async def on_request(self, request: httpx2.Request) -> None:
        if request.method != "POST":
            return
        try:
            body = json.loads(request.content)
        except ValueError:
            return
        if isinstance(body, dict) and "inputResponses" in (body.get("params") or {}):
            self.retries += 1

    async def sampling(
        self, ctx: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        texts = [m.content.text for m in params.messages if isinstance(m.content, types.TextContent)]
        answer = types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"an answer about {len(texts)} message(s)"),
            model="peer-model",
            stop_reason="endTurn",
        )
        self.requests.append(
            {
                "method": "sampling/createMessage",
                "messages": texts,
                "maxTokens": params.max_tokens,
                "systemPrompt": params.system_prompt,
                "answered": dump(answer),
            }
        )
        return answer

    async def elicitation(self, ctx: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        if isinstance(params, types.ElicitRequestURLParams):
            answer = types.ElicitResult(action="accept")
            seen = {"mode": "url", "message": params.message, "url": params.url, "elicitationId": params.elicitation_id}
        else:
            answer = types.ElicitResult(action="accept", content=dict(PROFILE))
            seen = {"mode": "form", "message": params.message, "requestedSchema": params.requested_schema}
        seen["method"] = "elicitation/create"
        seen["answered"] = dump(answer)
        self.requests.append(seen)
        return answer

    async def roots(self, ctx: ClientRequestContext) -> types.ListRootsResult:
        answer = types.ListRootsResult(roots=ROOTS)
        self.requests.append({"method": "roots/list", "answered": dump(answer)})
        return answer

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append({"level": params.level, "logger": params.logger, "data": params.data})
        self._changed()

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append({"progress": progress, "total": total, "message": message})
        self._changed()


class Run:
    """One scenario's client and what it observed."""

    def __init__(self, client: Client, rec: Recorder, args: argparse.Namespace) -> None:
        self.client = client
        self.rec = rec
        self.args = args

    def name(self, name: str) -> str:
        """The name to call a tool or prompt by."""
        return f"{self.args.prefix}{name}"

    def strip(self, value: Any) -> Any:
        """Drops the prefix from every `name` in `value` (recursively)."""
        prefix = self.args.prefix
        if isinstance(value, list):
            return [self.strip(v) for v in value]
        if isinstance(value, dict):
            out = {k: self.strip(v) for k, v in value.items()}
            name = out.get("name")
            if prefix and isinstance(name, str) and name.startswith(prefix):
                out["name"] = name[len(prefix) :]
            return out
        return value

    async def call(self, tool: str, arguments: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        result = await self.client.call_tool(self.name(tool), arguments or {}, **kw)
        out = dump(result)
        if result.is_error:
            texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
            raise ScenarioFailed(f"tool {tool} returned isError: {' '.join(texts)}")
        return out


def tool_text(result: dict[str, Any]) -> str:
    return " ".join(c.get("text", "") for c in result.get("content", []) if c.get("type") == "text")


async def list_all(fetch: Callable[[str | None], Awaitable[Any]], key: str) -> list[Any]:
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(100):
        page = await fetch(cursor)
        items.extend(getattr(page, key))
        cursor = page.next_cursor
        if cursor is None:
            break
    return items


async def catalog_lists(client: Client) -> dict[str, list[Any]]:
    return {
        "tools": await list_all(lambda c: client.list_tools(cursor=c), "tools"),
        "resources": await list_all(lambda c: client.list_resources(cursor=c), "resources"),
        "resourceTemplates": await list_all(
            lambda c: client.list_resource_templates(cursor=c), "resource_templates"
        ),
        "prompts": await list_all(lambda c: client.list_prompts(cursor=c), "prompts"),
    }


async def scenario_connect(run: Run) -> Any:
    session = run.client.session
    out: dict[str, Any] = {"protocolVersion": run.client.protocol_version}
    if run.args.era == "2026-07-28":
        # `Client(mode=<version>)` adopted a synthesized discover result, which
        # `session.discover()` would return without asking: send the probe itself.
        discovered = types.DiscoverResult.model_validate(await session.send_discover(run.args.era))
        session.adopt(discovered)
        out["supportedVersions"] = sorted(discovered.supported_versions)
        caps = discovered.capabilities
    else:
        caps = run.client.server_capabilities
    # Which features the server offers, not their flags (`listChanged` may differ legitimately).
    out["capabilities"] = sorted(k for k, v in dump(caps).items() if v is not None)
    return out


async def scenario_catalog(run: Run) -> Any:
    lists = await catalog_lists(run.client)
    out: dict[str, Any] = {}
    for key, items in lists.items():
        dumped = [run.strip(dump(i)) for i in items]
        out[key] = sorted(dumped, key=lambda d: (d.get("name", ""), d.get("uri", d.get("uriTemplate", ""))))
    return out


async def scenario_tools(run: Run) -> Any:
    return {
        "echo": await run.call("echo", {"message": "through the matrix é"}),
        "add": await run.call("add", {"a": 2, "b": 40}),
    }


async def scenario_logging(run: Run) -> Any:
    out: dict[str, Any] = {}
    if run.args.era != "2026-07-28":
        # The 2026 era has no logging/setLevel: the Client stamps the level in every
        # request's `_meta` instead (log_level="info" below).
        out["setLevel"] = dump(await run.client.set_logging_level("info"))
    result = await run.call("log_levels")
    sent = int(tool_text(result).split()[1])
    await run.rec.wait_for(run.rec.logs, sent)
    out["result"] = result
    out["messages"] = run.rec.logs
    return out


async def scenario_sampling(run: Run) -> Any:
    result = await run.call("sample", {"topic": "gateways"})
    return {"result": result, "requests": run.rec.requests}


async def scenario_elicitation_form(run: Run) -> Any:
    result = await run.call("ask_profile")
    return {"result": result, "requests": run.rec.requests}


async def scenario_elicitation_url(run: Run) -> Any:
    result = await run.call("open_url")
    return {"result": result, "requests": run.rec.requests}


async def scenario_roots(run: Run) -> Any:
    result = await run.call("list_roots")
    return {"result": result, "requests": run.rec.requests}


async def scenario_progress(run: Run) -> Any:
    result = await run.call("count", {"steps": 3}, progress_callback=run.rec.on_progress)
    await run.rec.wait_for(run.rec.progress, 3)
    return {"result": result, "progress": run.rec.progress}


async def scenario_resources(run: Run) -> Any:
    fixed = await run.client.read_resource("peer://greeting")
    templated = await run.client.read_resource("peer://items/apple")
    return {"greeting": dump(fixed), "item": dump(templated)}


async def scenario_prompts(run: Run) -> Any:
    got = await run.client.get_prompt(run.name("greet"), {"name": "Ada"})
    return run.strip(dump(got))


async def scenario_completion(run: Run) -> Any:
    prompt = await run.client.complete(types.PromptReference(name=run.name("greet")), {"name": "name", "value": "A"})
    template = await run.client.complete(
        types.ResourceTemplateReference(uri="peer://items/{name}"), {"name": "name", "value": "ap"}
    )
    return {"prompt": dump(prompt), "template": dump(template)}


RUNNERS: dict[str, Callable[[Run], Awaitable[Any]]] = {
    "connect": scenario_connect,
    "catalog": scenario_catalog,
    "tools": scenario_tools,
    "logging": scenario_logging,
    "sampling": scenario_sampling,
    "elicitation-form": scenario_elicitation_form,
    "elicitation-url": scenario_elicitation_url,
    "roots": scenario_roots,
    "progress": scenario_progress,
    "resources": scenario_resources,
    "prompts": scenario_prompts,
    "completion": scenario_completion,
}


def http_client(args: argparse.Namespace, rec: Recorder) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(timeout=httpx2.Timeout(args.timeout), event_hooks={"request": [rec.on_request]})


def make_client(args: argparse.Namespace, rec: Recorder, http: httpx2.AsyncClient) -> Client:
    return Client(
        streamable_http_client(args.url, http_client=http),
        mode="legacy" if args.era == "2025-11-25" else args.era,
        sampling_callback=rec.sampling,
        elicitation_callback=rec.elicitation,
        list_roots_callback=rec.roots,
        logging_callback=rec.log,
        log_level="info",
        client_info=types.Implementation(name="mcpgw-peer-client", version="1.0.0"),
        read_timeout_seconds=args.timeout,
        # Every answer must come from the server: the matrix compares what it sends.
        cache=None,
    )


def describe(exc: BaseException) -> dict[str, Any]:
    """The error of a failed scenario: JSON-RPC code and message where there is one."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return {"type": "MCPError", "code": exc.error.code, "message": exc.error.message}
    if isinstance(exc, TimeoutError):
        return {"type": "timeout", "code": None, "message": str(exc) or "timed out"}
    return {"type": type(exc).__name__, "code": None, "message": str(exc)}


async def run_scenario(args: argparse.Namespace, name: str) -> dict[str, Any]:
    rec = Recorder()
    try:
        with anyio.fail_after(args.timeout):
            async with http_client(args, rec) as http:
                async with make_client(args, rec, http) as client:
                    result = await RUNNERS[name](Run(client, rec, args))
        return {"ok": True, "result": result, "inputRequiredRetries": rec.retries}
    except Exception as exc:  # noqa: BLE001 - every failure is a reported outcome
        if args.verbose:
            traceback.print_exc(file=sys.stderr)
        failed: dict[str, Any] = {"ok": False, "error": describe(exc)}
        # What got through before the failure, to tell a dropped answer from a request that
        # never arrived.
        seen = {"requests": rec.requests, "messages": rec.logs, "progress": rec.progress}
        failed["observed"] = {k: v for k, v in seen.items() if v}
        return failed


async def dump_catalog(args: argparse.Namespace) -> dict[str, Any]:
    rec = Recorder()
    async with http_client(args, rec) as http:
        async with make_client(args, rec, http) as client:
            lists = await catalog_lists(client)
            return {k: [dump(i) for i in v] for k, v in lists.items()}


async def main(args: argparse.Namespace) -> None:
    if args.dump_catalog:
        print(json.dumps(await dump_catalog(args), sort_keys=True))
        return
    results = {name: await run_scenario(args, name) for name in args.scenario or SCENARIOS}
    print(json.dumps({"era": args.era, "scenarios": results}, sort_keys=True))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--era", choices=ERAS, required=True)
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="repeatable; default all")
    parser.add_argument("--prefix", "--strip-prefix", dest="prefix", default="", help="gateway name prefix")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per scenario")
    parser.add_argument("--dump-catalog", action="store_true", help="print the raw lists and exit")
    parser.add_argument("--verbose", action="store_true", help="tracebacks of failed scenarios on stderr")
    return parser.parse_args()


if __name__ == "__main__":
    # The 2025 era's logging/setLevel, sampling and roots are deprecated in 2026-07-28; the
    # matrix uses them on purpose.
    warnings.simplefilter("ignore", MCPDeprecationWarning)
    anyio.run(main, parse_args())
