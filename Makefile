# mcpgw — every entry point installs what it needs first.
#   make run    build the filter and start Envoy with it in front of a real MCP server
#   make test   install tools and peers, build, run every test
#   make bench  side-by-side benchmark; writes docs/benchmarks.md
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON  ?= python3
VENV    := .venv
NODE_DIR := tests/node
WASM_TARGET := wasm32-wasip1
WASM    := target/$(WASM_TARGET)/release/mcpgw_filter.wasm
export MCPGW_WASM := $(CURDIR)/$(WASM)
export MCPGW_ENVOY := $(CURDIR)/$(VENV)/bin/envoy
export MCPGW_PYTHON := $(CURDIR)/$(VENV)/bin/python
export MCPGW_NODE_MODULES := $(CURDIR)/$(NODE_DIR)/node_modules

.PHONY: help deps wasm build test test-manifests test-standalone image wasm-oci e2e run run-static bench bench-envoy bench-instructions bench-registry bench-relay fuzz fmt format clippy clean

help:
	@echo "make run | make test | make bench"

# --- installs -------------------------------------------------------------------------
$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error
	touch $@

.rustup-target-stamp:
	rustup target add $(WASM_TARGET)

deps: $(VENV)/.installed $(NODE_DIR)/node_modules/.installed
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

# --- build ----------------------------------------------------------------------------
wasm: deps
	cargo build --release --locked -p mcpgw-filter --target $(WASM_TARGET)

build: wasm
	cargo build --locked --workspace --all-targets

# --- test -----------------------------------------------------------------------------
# Format and lints first: they fail in seconds where the tests take minutes.
test: fmt clippy build test-manifests
	cargo test --locked --workspace
	$(E2E_STANDALONE)

# The e2e cases a control plane can configure, run once more with Envoy as the standalone
# overlay runs it (MCPGW_E2E_EDGE=standalone, tests/e2e/src/standalone.rs): started from
# manifests/standalone/envoy-bootstrap.yaml, its listener, routes, clusters and filter over
# ADS with mutual TLS from `mcpgw serve` (the overlay's mcpgw.toml, SQLite) holding the
# registry the case configures (the passthrough `/mcp` as the control plane's
# --edge-passthrough gateway, plugins through PUT /plugins, issuers, policies and
# revocations through their APIs, session lifetimes as control-plane flags). The other
# cases configure what no registry holds (paths mounting other upstreams, upstream
# identities with their own keys and clusters, a config Envoy must reject, a catalog its
# upstream does not list); docs/kubernetes.md says which and why.
E2E_STANDALONE_CASES := \
  cases::bad_input:: \
  cases::clients::python_client_to_server_everything_sse \
  cases::clients::rmcp_client_to_rmcp_server_json \
  cases::clients::rmcp_client_to_rmcp_server_sse_session \
  cases::clients::rmcp_client_to_server_everything_sse \
  cases::config::empty_config_means_defaults \
  cases::edge::a_real_client_uses_a_virtual_server \
  cases::edge::lists_paginate_and_bad_requests_get_precise_answers \
  cases::edge::sessions_span_stateful_upstreams_and_refuse_forgeries \
  cases::edge::the_python_sdk_runs_a_session_through_a_virtual_server \
  cases::era_bad_input:: \
  cases::guard:: \
  cases::guard_external:: \
  cases::hardening::batches_must_name_their_version_and_stay_short \
  cases::hardening::client_credentials_never_reach_an_upstream \
  cases::hardening::made_up_tool_names_at_a_virtual_server_spend_no_label_budget \
  cases::hardening::upstream_sessions_open_on_first_use_and_end_with_the_clients_session \
  cases::hardening::idle_upstream_sessions_are_ended_by_the_gateway \
  cases::hostile:: \
  cases::identity:: \
  cases::limits:: \
  cases::matrix::a_virtual_server_gives_what_its_upstream_gives_scenario_by_scenario \
  cases::matrix::a_tampered_request_state_is_refused_through_a_virtual_server_as_directly \
  cases::matrix::a_2026_listen_reaches_a_lone_2026_upstream_without_a_relay \
  cases::metrics::tool_label_cardinality_is_capped \
  cases::policy:: \
  cases::routing:: \
  cases::session::
E2E_STANDALONE = MCPGW_E2E_EDGE=standalone MCPGW_BIN=$(CURDIR)/target/debug/mcpgw \
  cargo test --locked -p mcpgw-e2e --test e2e -- $(E2E_STANDALONE_CASES)

test-standalone: wasm
	cargo build --locked --quiet -p mcpgw --bin mcpgw
	$(E2E_STANDALONE)

# manifests/, crds/ and the wasm OCI layout, without a cluster (tests/manifests): each
# overlay rendered by `kubectl kustomize` and validated against Kubernetes 1.32's schemas
# and the Istio / Prometheus-operator CRD schemas; the EnvoyFilter patches and the
# standalone bootstrap loaded by a real Envoy. Needs kubectl (with kustomize), node and
# the `mcpgw` binary (for its flags).
test-manifests: deps
	cargo build --locked --quiet -p mcpgw --bin mcpgw
	MCPGW_BIN=$(CURDIR)/target/debug/mcpgw $(VENV)/bin/python -m unittest discover -s tests/manifests

# Fails when a file is not formatted (`make format` formats them).
fmt:
	cargo fmt --all --check

format:
	cargo fmt --all

# Every target of the workspace, natively, and the filter as it ships (wasm32-wasip1, release).
clippy: deps
	cargo clippy --locked --workspace --all-targets -- -D warnings
	cargo clippy --locked -p mcpgw-filter --target $(WASM_TARGET) --release -- -D warnings

# End-to-end tests only: real Envoy + the filter .wasm + real MCP servers and clients;
# then the standalone edge (above).
e2e: wasm
	cargo build --locked --quiet -p mcpgw --bin mcpgw
	cargo test --locked -p mcpgw-e2e
	$(E2E_STANDALONE)

# --- images -------------------------------------------------------------------------------
# The control plane and the standalone Envoy (Containerfile) with the first container engine
# that works; the filter as an OCI image layout (Istio's wasm image format, for registries and
# init containers; the Istio overlay itself fetches the module by URL), without an engine.
IMAGE_REPO ?= mcpgw
IMAGE_TAG  ?= 0.1.0
CONTAINER_ENGINE ?= $(shell for e in podman docker buildah; do \
  command -v $$e >/dev/null 2>&1 && $$e info >/dev/null 2>&1 && { echo $$e; break; }; done)

image:
	@if [ -z "$(CONTAINER_ENGINE)" ]; then \
	  echo "make image: no working container engine: podman, docker and buildah are missing or cannot reach their daemon/storage ('<engine> info' fails)." >&2; \
	  echo "  Build on a machine with one, or name it: make image CONTAINER_ENGINE=/path/to/engine" >&2; \
	  echo "  The filter for Istio needs no engine: make wasm-oci" >&2; \
	  exit 1; fi
	$(CONTAINER_ENGINE) build -f Containerfile --target control-plane -t $(IMAGE_REPO)/control-plane:$(IMAGE_TAG) .
	$(CONTAINER_ENGINE) build -f Containerfile --target envoy -t $(IMAGE_REPO)/envoy:$(IMAGE_TAG) .

# target/wasm-oci: an OCI image layout (Istio's wasm image format) holding the filter; push
# it with `skopeo copy oci:target/wasm-oci:$(IMAGE_TAG) docker://REGISTRY/mcpgw/filter:$(IMAGE_TAG)`.
wasm-oci: wasm
	python3 tools/wasm_oci.py build --wasm $(WASM) --out target/wasm-oci --tag $(IMAGE_TAG)

# --- run ------------------------------------------------------------------------------
# Standalone: the control plane (SQLite), Envoy with an ADS-only bootstrap, and the demo
# upstream registered on start; prints the MCP URL and a client example. Ctrl-C stops.
run: wasm
	cargo build --locked --quiet -p mcpgw --bin mcpgw
	cargo run --locked --quiet -p mcpgw-e2e --bin mcpgw-standalone

# Filter development: Envoy with a static config and the filter (configured by CONFIG) in
# front of server-everything, no control plane:
#   make run-static CONFIG='{"policy":{"denied_tools":["get-env"]}}'
run-static: wasm
	cargo run --locked --quiet -p mcpgw-e2e --bin mcpgw-dev -- '$(or $(CONFIG),{})'

# --- fuzz (not part of make test) ------------------------------------------------------
# cargo-fuzz instruments with flags only nightly accepts; RUSTC_BOOTSTRAP lets the pinned
# stable toolchain take them. FUZZ_SECONDS bounds each target's run.
FUZZ_SECONDS ?= 60
CARGO_FUZZ := .tools/bin/cargo-fuzz
$(CARGO_FUZZ):
	cargo install cargo-fuzz --version =0.13.1 --locked --root .tools

fuzz: $(CARGO_FUZZ)
	cd fuzz && for t in request_parser sse_stream; do \
	  RUSTC_BOOTSTRAP=1 ../$(CARGO_FUZZ) run --sanitizer none $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

# --- bench ----------------------------------------------------------------------------
# Side by side in one run: plain Envoy, native MCP filter, wasm floor filter, mcpgw filter.
# Knobs (env): MCPGW_BENCH_ROUNDS, MCPGW_BENCH_SECONDS, MCPGW_BENCH_WARMUP_SECONDS,
# MCPGW_BENCH_CONNECTIONS, MCPGW_BENCH_VARIANTS, MCPGW_BENCH_PIN, MCPGW_BENCH_NICE,
# MCPGW_BENCH_OUTPUT.
# The driver skips the workspace's fat LTO (meant for the filter): it builds in minutes,
# not a quarter hour, on a 2-core machine, and is not what is measured.
bench: bench-envoy bench-instructions bench-registry bench-relay

bench-envoy: wasm
	cargo build --release --locked -p mcpgw-bench-floor --target $(WASM_TARGET)
	cargo build --release --locked -p mcpgw-bench --config profile.release.lto=false --config profile.release.codegen-units=16
	MCPGW_BENCH_COMMAND="make bench" ./target/release/mcpgw-bench

# Instructions Envoy executes per request, each variant under callgrind (valgrind): the
# same binaries give the same count on a busy machine, so a filter change of a percent shows.
# Knobs: MCPGW_BENCH_VARIANTS, MCPGW_BENCH_INSTR_WARMUP, MCPGW_BENCH_INSTR_REQUESTS,
# MCPGW_BENCH_INSTR_REPEATS, MCPGW_BENCH_OUTPUT.
bench-instructions: wasm
	cargo build --release --locked -p mcpgw-bench-floor --target $(WASM_TARGET)
	cargo build --release --locked -p mcpgw-bench --config profile.release.lto=false --config profile.release.codegen-units=16
	MCPGW_BENCH_COMMAND="make bench-instructions" ./target/release/mcpgw-bench-instructions

# The control plane with a 10,000-tool registry on SQLite and PostgreSQL (127.0.0.1:5432);
# then xDS push convergence from that registry to 1, 100 and 1,000 ADS clients.
bench-registry:
	cargo build --release --locked -p mcpgw-bench-registry --config profile.release.lto=false --config profile.release.codegen-units=16
	MCPGW_BENCH_COMMAND="make bench-registry" ./target/release/mcpgw-bench-registry
	MCPGW_BENCH_COMMAND="make bench-registry" ./target/release/mcpgw-bench-xds

# Legacy SSE clients through the session relay vs streamable HTTP clients, same call, same
# Envoy and control plane, alternating rounds.
bench-relay: wasm
	cargo build --release --locked -p mcpgw-bench-registry --bin mcpgw-bench-relay --config profile.release.lto=false --config profile.release.codegen-units=16
	MCPGW_BENCH_COMMAND="make bench-relay" ./target/release/mcpgw-bench-relay

clean:
	cargo clean
	rm -rf $(VENV) $(NODE_DIR)/node_modules .run
