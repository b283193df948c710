"""Applies Istio EnvoyFilter patches to an Envoy bootstrap, as istiod applies them to the
configuration it generates for a gateway: the subset of operations manifests/istio uses.

- applyTo CLUSTER, operation ADD: the value becomes a cluster (a name already taken is an
  error: Envoy would reject the duplicate);
- applyTo HTTP_FILTER, operation INSERT_BEFORE: the value goes before the http filter
  `subFilter.name` in every HTTP connection manager of the listeners that match
  `listener.portNumber` (and `filterChain.filter.name`);
- applyTo NETWORK_FILTER, operation MERGE: the value is merged into every filter named
  `filterChain.filter.name` of the listeners on `listener.portNumber`, as protobuf merges
  (objects field by field, lists appended, scalars replaced);
- applyTo HTTP_ROUTE, operation INSERT_FIRST: the value goes first in every virtual host
  of the route configurations of the listeners on `routeConfiguration.portNumber` (inline
  `route_config` here; istiod's come over RDS, named `http.PORT`).

`apply_wasm_plugin` adds the filter Envoy runs for a WasmPlugin, as istiod renders it.

Only `context: GATEWAY` (or ANY) patches apply, and only when the EnvoyFilter's
workloadSelector selects the gateway's labels. A patch that matches nothing is an error
here (istiod skips it silently, which is exactly the mistake a test should catch); so is
an operation this applier does not implement.
"""

from __future__ import annotations

import copy
import json

HCM = "envoy.filters.network.http_connection_manager"


class PatchError(Exception):
    """A patch cannot be applied; the message names the patch."""


def _selected(envoy_filter: dict, labels: dict) -> bool:
    wanted = (envoy_filter.get("spec", {}).get("workloadSelector") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def _port(listener: dict) -> int | None:
    return listener.get("address", {}).get("socket_address", {}).get("port_value")


def _add_cluster(config: dict, value: dict, where: str) -> None:
    clusters = config.setdefault("static_resources", {}).setdefault("clusters", [])
    if any(c.get("name") == value.get("name") for c in clusters):
        raise PatchError(f"{where}: a cluster named {value.get('name')!r} exists already")
    clusters.append(copy.deepcopy(value))


def _hcms(config: dict, port: int | None):
    """The HTTP connection managers' typed configs of the listeners on `port` (None: all)."""
    for listener in config.get("static_resources", {}).get("listeners", []):
        if port is not None and _port(listener) != port:
            continue
        for fc in listener.get("filter_chains", []):
            for f in fc.get("filters", []):
                if f.get("name") == HCM:
                    yield f.get("typed_config", {})


def _merged(into, value):
    """`value` merged into `into` as protobuf merges messages."""
    if isinstance(into, dict) and isinstance(value, dict):
        out = dict(into)
        for k, v in value.items():
            out[k] = _merged(into[k], v) if k in into else copy.deepcopy(v)
        return out
    if isinstance(into, list) and isinstance(value, list):
        return into + copy.deepcopy(value)
    return copy.deepcopy(value)


def _merge_network_filter(config: dict, match: dict, value: dict, where: str) -> None:
    listener_match = match.get("listener") or {}
    chain_filter = (listener_match.get("filterChain") or {}).get("filter") or {}
    name = chain_filter.get("name")
    if not name or chain_filter.get("subFilter"):
        raise PatchError(f"{where}: NETWORK_FILTER MERGE needs filterChain.filter.name without a subFilter")
    merged = 0
    for listener in config.get("static_resources", {}).get("listeners", []):
        port = listener_match.get("portNumber")
        if port is not None and _port(listener) != port:
            continue
        for fc in listener.get("filter_chains", []):
            for i, f in enumerate(fc.get("filters", [])):
                if f.get("name") != name:
                    continue
                if value.get("typed_config", {}).get("@type") not in (None, f.get("typed_config", {}).get("@type")):
                    raise PatchError(f"{where}: the value's @type is not the filter's")
                fc["filters"][i] = _merged(f, value)
                merged += 1
    if merged == 0:
        raise PatchError(f"{where}: no listener on port {listener_match.get('portNumber')} has {name}")


def _insert_first_route(config: dict, match: dict, value: dict, where: str) -> None:
    route_match = match.get("routeConfiguration") or {}
    if set(route_match) - {"portNumber"}:
        raise PatchError(f"{where}: this applier matches route configurations by portNumber only")
    inserted = 0
    for hcm in _hcms(config, route_match.get("portNumber")):
        if "route_config" not in hcm:
            raise PatchError(f"{where}: the listener's routes are not inline")
        for vhost in hcm["route_config"].get("virtual_hosts", []):
            routes = vhost.setdefault("routes", [])
            if value.get("name") and value.get("name") in [r.get("name") for r in routes]:
                raise PatchError(f"{where}: route {value.get('name')!r} is there already")
            routes.insert(0, copy.deepcopy(value))
            inserted += 1
    if inserted == 0:
        raise PatchError(f"{where}: no virtual host on port {route_match.get('portNumber')}")


def _insert_http_filter(config: dict, match: dict, value: dict, where: str) -> None:
    listener_match = match.get("listener") or {}
    port = listener_match.get("portNumber")
    chain = listener_match.get("filterChain") or {}
    network = (chain.get("filter") or {}).get("name", HCM)
    sub = ((chain.get("filter") or {}).get("subFilter") or {}).get("name")
    if network != HCM or not sub:
        raise PatchError(f"{where}: INSERT_BEFORE needs filterChain.filter {HCM} with a subFilter")
    inserted = 0
    for listener in config.get("static_resources", {}).get("listeners", []):
        if port is not None and _port(listener) != port:
            continue
        for fc in listener.get("filter_chains", []):
            for f in fc.get("filters", []):
                if f.get("name") != network:
                    continue
                http_filters = f.get("typed_config", {}).get("http_filters", [])
                names = [h.get("name") for h in http_filters]
                if value.get("name") in names:
                    raise PatchError(f"{where}: http filter {value.get('name')!r} is there already")
                if sub in names:
                    http_filters.insert(names.index(sub), copy.deepcopy(value))
                    inserted += 1
    if inserted == 0:
        raise PatchError(f"{where}: no listener on port {port} has the http filter {sub!r}")


def apply(config: dict, envoy_filter: dict, labels: dict) -> dict:
    """`config` with the patches of `envoy_filter` applied for a gateway with `labels`
    (a new dict; `config` is not changed)."""
    name = envoy_filter.get("metadata", {}).get("name", "?")
    if envoy_filter.get("kind") != "EnvoyFilter":
        raise PatchError(f"{name}: not an EnvoyFilter")
    out = copy.deepcopy(config)
    if not _selected(envoy_filter, labels):
        return out
    for i, patch in enumerate(envoy_filter.get("spec", {}).get("configPatches", [])):
        where = f"{name} configPatches[{i}]"
        match = patch.get("match") or {}
        if match.get("context", "ANY") not in ("GATEWAY", "ANY"):
            continue
        apply_to = patch.get("applyTo")
        op = (patch.get("patch") or {}).get("operation")
        value = (patch.get("patch") or {}).get("value")
        if not isinstance(value, dict):
            raise PatchError(f"{where}: patch.value must be an object")
        if (apply_to, op) == ("CLUSTER", "ADD"):
            _add_cluster(out, value, where)
        elif (apply_to, op) == ("HTTP_FILTER", "INSERT_BEFORE"):
            _insert_http_filter(out, match, value, where)
        elif (apply_to, op) == ("NETWORK_FILTER", "MERGE"):
            _merge_network_filter(out, match, value, where)
        elif (apply_to, op) == ("HTTP_ROUTE", "INSERT_FIRST"):
            _insert_first_route(out, match, value, where)
        else:
            raise PatchError(f"{where}: {apply_to} {op} is not implemented by this applier")
    return out


WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
FAILURE_POLICIES = {"FAIL_CLOSE": "FAIL_CLOSED", "FAIL_OPEN": "FAIL_OPEN", "FAIL_RELOAD": "FAIL_RELOAD"}
# Filters a phase-AUTHZ plugin goes before (istiod puts AUTHZ plugins after Istio's
# authentication and authorization filters, before stats and the router).
AUTHZ_BEFORE = ("istio.stats", "envoy.filters.http.router")


def apply_wasm_plugin(config: dict, plugin: dict, labels: dict, module: str) -> dict:
    """`config` with the HTTP filter Envoy runs for the WasmPlugin `plugin` on a gateway
    with `labels`, as istiod renders it (pilot/pkg/model/extensions.go: PluginConfig `name`
    `NAMESPACE.NAME`, `root_id` = `pluginName`, `configuration` = the pluginConfig as a JSON
    StringValue, `failure_policy` from `failStrategy`, runtime v8) after istio-agent
    replaced the remote module with the local file `module` it fetched and checked. istiod
    sends it over ECDS; here it is inline, which is what Envoy runs once ECDS delivered it.
    Only HTTP plugins in phase AUTHZ (or unset), matched by `match[].ports`."""
    meta = plugin.get("metadata", {})
    spec = plugin.get("spec", {})
    where = f"WasmPlugin {meta.get('namespace')}/{meta.get('name')}"
    if plugin.get("kind") != "WasmPlugin":
        raise PatchError(f"{where}: not a WasmPlugin")
    out = copy.deepcopy(config)
    wanted = (spec.get("selector") or {}).get("matchLabels") or {}
    if not all(labels.get(k) == v for k, v in wanted.items()):
        return out
    if spec.get("type", "HTTP") != "HTTP" or spec.get("phase", "AUTHZ") != "AUTHZ":
        raise PatchError(f"{where}: this renderer knows HTTP plugins in phase AUTHZ only")
    ports = {p["number"] for m in spec.get("match") or [] for p in m.get("ports") or []}
    name = f"{meta.get('namespace')}.{meta.get('name')}"
    wasm = {
        "name": name,
        "root_id": spec.get("pluginName", ""),
        "vm_config": {
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": module}},
            "environment_variables": {"key_values": {"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1"}},
        },
        "failure_policy": FAILURE_POLICIES[spec.get("failStrategy", "FAIL_CLOSE")],
    }
    if spec.get("pluginConfig"):
        wasm["configuration"] = {
            "@type": STRING_VALUE,
            "value": json.dumps(spec["pluginConfig"], separators=(",", ":"), sort_keys=True),
        }
    value = {"name": name, "typed_config": {"@type": WASM, "config": wasm}}
    inserted = 0
    for listener in out.get("static_resources", {}).get("listeners", []):
        if ports and _port(listener) not in ports:
            continue
        for hcm in _hcms({"static_resources": {"listeners": [listener]}}, None):
            filters = hcm.get("http_filters", [])
            names = [f.get("name") for f in filters]
            at = next((names.index(n) for n in AUTHZ_BEFORE if n in names), len(filters))
            filters.insert(at, copy.deepcopy(value))
            inserted += 1
    if inserted == 0:
        raise PatchError(f"{where}: no HTTP listener on ports {sorted(ports)}")
    return out
