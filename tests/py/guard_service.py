"""The reference external guardrail: a gRPC server implementing `mcpgw.guard.v1.Guardrail`
(proto/mcpgw/guard/v1/guard.proto), for the end-to-end tests and as an example for teams
writing their own.

The Python code for the messages is generated from the repository's .proto at start-up
with `grpc_tools.protoc` (PyPI grpcio-tools), so the tests check the contract as written,
not a copy of it.

Usage: guard_service.py PROTO_ROOT [--deny WORD] [--mask FIELD]
Prints {"port": N} on one line once it serves on 127.0.0.1:N, then one JSON line per
check it answers: {"plugin", "hook", "method", "server", "name", "subject", "verdict"}.

What it does:
- pre hooks: arguments with a string containing WORD (whole word, any case) are denied
  with code -32010 and a reason that does not repeat the word; an argument `sleep_ms`
  makes it wait that long first (timeout tests); string arguments starting `secret-` are
  replaced by `[redacted]` (a mutation, with header `x-guard-verdict: redacted`);
  anything else passes;
- post hooks: a result whose object members are named FIELD (any depth) get their value
  replaced by `***`, and text containing `secret-…` words gets them replaced by
  `[masked]` (a mutation); anything else passes.
"""

import importlib
import json
import os
import re
import sys
import tempfile
import time
from concurrent import futures

import grpc
from grpc_tools import protoc

PROTO = "mcpgw/guard/v1/guard.proto"


def load(proto_root):
    out = tempfile.mkdtemp(prefix="mcpgw-guard-proto-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main(
        [
            "protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            os.path.join(proto_root, PROTO),
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed on {PROTO}: {code}")
    sys.path.insert(0, out)
    pb = importlib.import_module("mcpgw.guard.v1.guard_pb2")
    rpc = importlib.import_module("mcpgw.guard.v1.guard_pb2_grpc")
    return pb, rpc


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


SECRET = re.compile(r"\bsecret-[A-Za-z0-9]+")


def redact(value):
    """Arguments with every `secret-…` string replaced; whether any was."""
    if isinstance(value, str) and value.startswith("secret-"):
        return "[redacted]", True
    if isinstance(value, dict):
        changed = False
        out = {}
        for k, v in value.items():
            out[k], c = redact(v)
            changed |= c
        return out, changed
    if isinstance(value, list):
        pairs = [redact(v) for v in value]
        return [p[0] for p in pairs], any(p[1] for p in pairs)
    return value, False


def mask(value, field):
    """A result with members named `field` and `secret-…` words masked; whether any was."""
    if isinstance(value, dict):
        changed = False
        out = {}
        for k, v in value.items():
            if k == field:
                out[k], c = "***", True
            else:
                out[k], c = mask(v, field)
            changed |= c
        return out, changed
    if isinstance(value, list):
        pairs = [mask(v, field) for v in value]
        return [p[0] for p in pairs], any(p[1] for p in pairs)
    if isinstance(value, str):
        new = SECRET.sub("[masked]", value)
        return new, new != value
    return value, False


def main():
    args = sys.argv[1:]
    if not args:
        raise SystemExit(__doc__)
    proto_root = args.pop(0)
    deny_word, mask_field = None, "ssn"
    while args:
        flag = args.pop(0)
        if flag == "--deny":
            deny_word = args.pop(0).lower()
        elif flag == "--mask":
            mask_field = args.pop(0)
        else:
            raise SystemExit(f"unknown flag {flag}")
    pb, rpc = load(proto_root)
    pre_hooks = {
        pb.HOOK_TOOL_PRE_INVOKE,
        pb.HOOK_PROMPT_PRE_FETCH,
        pb.HOOK_RESOURCE_PRE_FETCH,
    }

    def log(request, verdict):
        print(
            json.dumps(
                {
                    "plugin": request.plugin,
                    "hook": pb.Hook.Name(request.hook),
                    "method": request.method,
                    "server": request.server,
                    "name": request.name,
                    "subject": request.principal.subject,
                    "request_id": request.request_id,
                    "verdict": verdict,
                }
            ),
            flush=True,
        )

    class Guardrail(rpc.GuardrailServicer):
        def Check(self, request, context):
            if request.hook in pre_hooks:
                params = json.loads(request.params or b"{}")
                arguments = params.get("arguments") or {}
                sleep_ms = arguments.get("sleep_ms") if isinstance(arguments, dict) else None
                if isinstance(sleep_ms, (int, float)):
                    time.sleep(sleep_ms / 1000)
                if deny_word and any(
                    re.search(rf"\b{re.escape(deny_word)}\b", s.lower())
                    for s in strings(arguments)
                ):
                    log(request, "deny")
                    return pb.CheckResponse(
                        deny=pb.Deny(reason="an argument carries a denied word", code=-32010)
                    )
                redacted, changed = redact(arguments)
                if changed:
                    params["arguments"] = redacted
                    log(request, "mutate")
                    return pb.CheckResponse(
                        mutate=pb.Mutate(
                            params=json.dumps(params).encode(),
                            headers=[pb.Header(name="x-guard-verdict", value="redacted")],
                        )
                    )
                log(request, "pass")
                return pb.CheckResponse(**{"pass": pb.Pass()})
            result = json.loads(request.result or b"{}")
            masked, changed = mask(result, mask_field)
            if changed:
                log(request, "mutate")
                return pb.CheckResponse(mutate=pb.Mutate(result=json.dumps(masked).encode()))
            log(request, "pass")
            return pb.CheckResponse(**{"pass": pb.Pass()})

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    rpc.add_GuardrailServicer_to_server(Guardrail(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(json.dumps({"port": port}), flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
