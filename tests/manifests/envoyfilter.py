"""Applies Istio EnvoyFilter patches to an Envoy bootstrap, as istiod applies them to the
configuration it generates for a gateway or a sidecar: the subset of operations
manifests/istio and manifests/components/istio-sidecar use.

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

- applyTo EXTENSION_CONFIG, operation ADD: served as istiod serves it over ECDS, with
  istio-agent's rewrite of a remote wasm module to a local file (`apply(..., module=)`).

For a gateway (`proxy="gateway"`) only `context: GATEWAY` (or ANY) patches apply. For a
sidecar (`proxy="sidecar"`), `SIDECAR_INBOUND` patches apply to the inbound side (the
listeners with `traffic_direction: INBOUND`, Istio's `virtualInbound`, and the route
configurations named `inbound|PORT||`), `SIDECAR_OUTBOUND` ones to the rest; a cluster
added in either context is added once, and one added in context ANY is an error (istiod
appends each context's added clusters to CDS: that one twice). On the virtual listeners
(`virtualInbound`, `virtualOutbound`) `listener.portNumber` matches each filter chain's
`filter_chain_match.destination_port`, as istiod matches it
(pilot/pkg/networking/core/envoyfilter/listener_patch.go); a sidecar's route
configuration's port is the one in its name (route_configuration_patch.go).

Patches apply only when the EnvoyFilter's workloadSelector selects the proxy's labels.
Several EnvoyFilters are applied one after the other (`apply` on the result of `apply`),
the caller keeping istiod's order: the root namespace's first, then the workload
namespace's (each by priority, then creation time). A patch
that matches nothing is an error here (istiod skips it silently, which is exactly the
mistake a test should catch); so is an operation this applier does not implement.
"""

from __future__ import annotations

import copy

HCM = "envoy.filters.network.http_connection_manager"


class PatchError(Exception):
    """A patch cannot be applied; the message names the patch."""


def _selected(envoy_filter: dict, labels: dict) -> bool:
    wanted = (envoy_filter.get("spec", {}).get("workloadSelector") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


VIRTUAL_LISTENERS = ("virtualInbound", "virtualOutbound")
PROXIES = {
    "gateway": {"GATEWAY": "any", "ANY": "any"},
    "sidecar": {"SIDECAR_INBOUND": "inbound", "SIDECAR_OUTBOUND": "outbound", "ANY": "any"},
}


def _port(listener: dict) -> int | None:
    return listener.get("address", {}).get("socket_address", {}).get("port_value")


def _side(listener: dict) -> str:
    return "inbound" if listener.get("traffic_direction") == "INBOUND" else "outbound"


def _chains(config: dict, port: int | None, side: str = "any"):
    """The filter chains on `port` (None: all) of the listeners on `side` (`inbound`,
    `outbound`, `any`): on a virtual listener the chains whose destination port is `port`,
    elsewhere every chain of a listener on `port`."""
    for listener in config.get("static_resources", {}).get("listeners", []):
        if side != "any" and _side(listener) != side:
            continue
        virtual = listener.get("name") in VIRTUAL_LISTENERS
        if port is not None and not virtual and _port(listener) != port:
            continue
        for fc in listener.get("filter_chains", []):
            if port is not None and virtual and (fc.get("filter_chain_match") or {}).get("destination_port") != port:
                continue
            yield fc


def _add_cluster(config: dict, value: dict, where: str) -> None:
    clusters = config.setdefault("static_resources", {}).setdefault("clusters", [])
    if any(c.get("name") == value.get("name") for c in clusters):
        raise PatchError(f"{where}: a cluster named {value.get('name')!r} exists already")
    clusters.append(copy.deepcopy(value))


def _hcms(config: dict, port: int | None, side: str = "any"):
    """The HTTP connection managers' typed configs of the filter chains on `port` (None:
    all) of the listeners on `side`."""
    for fc in _chains(config, port, side):
        for f in fc.get("filters", []):
            if f.get("name") == HCM:
                yield f.get("typed_config", {})


def _route_port(name: str) -> int | None:
    """The port of a sidecar's route configuration, as istiod reads it from its name:
    `inbound|PORT||` inbound, `PORT` outbound."""
    part = name.split("|")[1] if name.startswith("inbound|") and name.count("|") >= 3 else name
    return int(part) if part.isdigit() else None


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


def _merge_network_filter(config: dict, match: dict, value: dict, where: str, side: str = "any") -> None:
    listener_match = match.get("listener") or {}
    chain_filter = (listener_match.get("filterChain") or {}).get("filter") or {}
    name = chain_filter.get("name")
    if not name or chain_filter.get("subFilter"):
        raise PatchError(f"{where}: NETWORK_FILTER MERGE needs filterChain.filter.name without a subFilter")
    merged = 0
    for fc in _chains(config, listener_match.get("portNumber"), side):
        for i, f in enumerate(fc.get("filters", [])):
            if f.get("name") != name:
                continue
            if value.get("typed_config", {}).get("@type") not in (None, f.get("typed_config", {}).get("@type")):
                raise PatchError(f"{where}: the value's @type is not the filter's")
            fc["filters"][i] = _merged(f, value)
            merged += 1
    if merged == 0:
        raise PatchError(f"{where}: no listener on port {listener_match.get('portNumber')} has {name}")


def _insert_first_route(config: dict, match: dict, value: dict, where: str, side: str = "any") -> None:
    route_match = match.get("routeConfiguration") or {}
    if set(route_match) - {"portNumber"}:
        raise PatchError(f"{where}: this applier matches route configurations by portNumber only")
    port = route_match.get("portNumber")
    inserted = 0
    if side == "any":
        # A gateway's route configurations, matched by their listener's port.
        hcms = list(_hcms(config, port))
        if any("route_config" not in hcm for hcm in hcms):
            raise PatchError(f"{where}: the listener's routes are not inline")
    else:
        # A sidecar's, matched by the port in their names (those over RDS are not modelled).
        hcms = [
            hcm
            for hcm in _hcms(config, None, side)
            if "route_config" in hcm and port in (None, _route_port(hcm["route_config"].get("name", "")))
        ]
    for hcm in hcms:
        for vhost in hcm["route_config"].get("virtual_hosts", []):
            routes = vhost.setdefault("routes", [])
            if value.get("name") and value.get("name") in [r.get("name") for r in routes]:
                raise PatchError(f"{where}: route {value.get('name')!r} is there already")
            routes.insert(0, copy.deepcopy(value))
            inserted += 1
    if inserted == 0:
        raise PatchError(f"{where}: no virtual host on port {route_match.get('portNumber')}")


def _insert_http_filter(config: dict, match: dict, value: dict, where: str, side: str = "any") -> None:
    listener_match = match.get("listener") or {}
    port = listener_match.get("portNumber")
    chain = listener_match.get("filterChain") or {}
    network = (chain.get("filter") or {}).get("name", HCM)
    sub = ((chain.get("filter") or {}).get("subFilter") or {}).get("name")
    if network != HCM or not sub:
        raise PatchError(f"{where}: INSERT_BEFORE needs filterChain.filter {HCM} with a subFilter")
    inserted = 0
    for fc in _chains(config, port, side):
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


def apply(
    config: dict, envoy_filter: dict, labels: dict, module: str | None = None, proxy: str = "gateway"
) -> dict:
    """`config` with the patches of `envoy_filter` applied for a `proxy` (`gateway` or
    `sidecar`) with `labels` (a new dict; `config` is not changed). With `module`, the
    extension configurations the EnvoyFilter adds are served (see `_serve_ecds`, the
    module file as istio-agent hands it over); without, the filters keep discovering them
    from istiod."""
    name = envoy_filter.get("metadata", {}).get("name", "?")
    if envoy_filter.get("kind") != "EnvoyFilter":
        raise PatchError(f"{name}: not an EnvoyFilter")
    if proxy not in PROXIES:
        raise PatchError(f"{name}: proxy {proxy!r} is neither gateway nor sidecar")
    out = copy.deepcopy(config)
    if not _selected(envoy_filter, labels):
        return out
    extensions = []
    for i, patch in enumerate(envoy_filter.get("spec", {}).get("configPatches", [])):
        where = f"{name} configPatches[{i}]"
        match = patch.get("match") or {}
        side = PROXIES[proxy].get(match.get("context", "ANY"))
        if side is None:
            continue
        apply_to = patch.get("applyTo")
        op = (patch.get("patch") or {}).get("operation")
        value = (patch.get("patch") or {}).get("value")
        if not isinstance(value, dict):
            raise PatchError(f"{where}: patch.value must be an object")
        if (apply_to, op) == ("CLUSTER", "ADD"):
            if proxy == "sidecar" and match.get("context", "ANY") == "ANY":
                # istiod adds a sidecar's clusters per context, outbound then inbound: one
                # for ANY lands twice in CDS, which Envoy rejects.
                raise PatchError(f"{where}: a cluster added in context ANY is added twice to a sidecar")
            _add_cluster(out, value, where)
        elif (apply_to, op) == ("EXTENSION_CONFIG", "ADD"):
            extensions.append(value)
        elif (apply_to, op) == ("HTTP_FILTER", "INSERT_BEFORE"):
            _insert_http_filter(out, match, value, where, side)
        elif (apply_to, op) == ("NETWORK_FILTER", "MERGE"):
            _merge_network_filter(out, match, value, where, side)
        elif (apply_to, op) == ("HTTP_ROUTE", "INSERT_FIRST"):
            _insert_first_route(out, match, value, where, side)
        else:
            raise PatchError(f"{where}: {apply_to} {op} is not implemented by this applier")
    if module is not None:
        _serve_ecds(out, extensions, module, name)
    return out



WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
TYPED_STRUCTS = ("type.googleapis.com/udpa.type.v1.TypedStruct", "type.googleapis.com/xds.type.v3.TypedStruct")


def _serve_ecds(config: dict, extensions: list[dict], module: str, where: str) -> None:
    """What Envoy runs once istiod served `extensions` over ECDS and istio-agent rewrote
    them: each HTTP filter whose `config_discovery` names one gets it inline, a TypedStruct
    turned into its message, and a Wasm module's `code.remote` (an oci:// or https:// URL
    that istio-agent fetched and checked against its sha256) replaced by the local file
    `module` (pkg/wasm/convert.go)."""
    by_name = {e.get("name"): e for e in extensions}
    served = set()
    for hcm in _hcms(config, None):
        for f in hcm.get("http_filters", []):
            discovery = f.get("config_discovery")
            if not discovery or f.get("name") not in by_name:
                continue
            typed = copy.deepcopy(by_name[f["name"]]["typed_config"])
            if typed.get("@type") in TYPED_STRUCTS:
                typed = {"@type": typed["type_url"], **typed.get("value", {})}
            if typed.get("@type") not in discovery.get("type_urls", []):
                raise PatchError(f"{where}: {f['name']} is a {typed.get('@type')}, not one of {discovery.get('type_urls')}")
            if typed["@type"] == WASM:
                code = typed.get("config", {}).get("vm_config", {}).get("code", {})
                remote = code.pop("remote", None)
                if remote is None or not remote.get("http_uri", {}).get("uri") or not remote.get("sha256"):
                    raise PatchError(f"{where}: {f['name']}: istio-agent fetches only remote code with a uri and a sha256")
                code["local"] = {"filename": module}
            del f["config_discovery"]
            f["typed_config"] = typed
            served.add(f["name"])
    if set(by_name) - served:
        raise PatchError(f"{where}: no HTTP filter discovers {sorted(set(by_name) - served)}")
