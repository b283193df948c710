#!/usr/bin/env python3
"""The mcpgw filter as an OCI image layout in Istio's wasm image format, no container engine.

The "compat" variant of the wasm image format (solo-io/wasm spec, which Istio's
WasmPlugin pulls): one layer that is the .wasm file itself, media type
`application/vnd.module.wasm.content.layer.v1+wasm`, and a config blob of media type
`application/vnd.module.wasm.config.v1+json`. The output directory is an OCI image layout
(`oci-layout`, `index.json`, `blobs/sha256/…`); push it with any OCI client, e.g.

    skopeo copy oci:target/wasm-oci:0.1.0 docker://registry.example.com/mcpgw/filter:0.1.0
    oras cp --from-oci-layout target/wasm-oci:0.1.0 registry.example.com/mcpgw/filter:0.1.0

The build is reproducible (no timestamps): the same .wasm gives the same manifest digest,
which is what the `sha256` of the Istio overlay's extension configuration (and a
WasmPlugin's) names for an OCI image (for an `https://` URL it is the sha256 of the .wasm,
also printed).

    wasm_oci.py build --wasm FILE --out DIR [--tag TAG]   write the layout, print the digests
    wasm_oci.py verify DIR [--wasm FILE]                  check every digest and size (and
                                                          that the layer is FILE), print them
Only the standard library.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

LAYER_MEDIA_TYPE = "application/vnd.module.wasm.content.layer.v1+wasm"
CONFIG_MEDIA_TYPE = "application/vnd.module.wasm.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
WASM_MAGIC = b"\0asm"


class LayoutError(Exception):
    """The layout (or its input) is not what it must be; the message says where."""


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _write_blob(out: Path, data: bytes) -> dict:
    digest = _digest(data)
    path = out / "blobs" / "sha256" / digest.split(":", 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def build(wasm: Path, out: Path, tag: str) -> dict:
    """Writes the layout for `wasm` into `out` (an existing layout there is replaced) and
    returns the digests: manifest (what the extension configuration's sha256 names) and wasm."""
    module = wasm.read_bytes()
    if not module.startswith(WASM_MAGIC):
        raise LayoutError(f"{wasm}: not a WebAssembly module (no \\0asm magic)")
    if not tag or "/" in tag or ":" in tag:
        raise LayoutError(f"tag {tag!r}: must be a non-empty name without '/' or ':'")
    if out.exists():
        for name in ("index.json", "oci-layout"):
            (out / name).unlink(missing_ok=True)
        blobs = out / "blobs" / "sha256"
        if blobs.is_dir():
            for blob in blobs.iterdir():
                blob.unlink()
    out.mkdir(parents=True, exist_ok=True)
    layer = _write_blob(out, module)
    config_doc = {
        # What the module is for and what it exports (solo-io/wasm spec's config fields).
        "type": "envoy_proxy",
        "abiVersions": ["v0.2.1"],
        "rootIds": ["mcpgw"],
    }
    config = _write_blob(out, _canonical(config_doc))
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, **config},
        "layers": [
            {
                "mediaType": LAYER_MEDIA_TYPE,
                **layer,
                "annotations": {"org.opencontainers.image.title": wasm.name},
            }
        ],
        "annotations": {"org.opencontainers.image.title": "mcpgw filter"},
    }
    manifest = _write_blob(out, _canonical(manifest_doc))
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {"mediaType": MANIFEST_MEDIA_TYPE, **manifest, "annotations": {REF_NAME: tag}}
        ],
    }
    (out / "index.json").write_bytes(_canonical(index))
    (out / "oci-layout").write_bytes(_canonical({"imageLayoutVersion": "1.0.0"}))
    return {"manifest": manifest["digest"], "wasm": layer["digest"], "tag": tag}


def _blob(root: Path, descriptor: dict, what: str) -> bytes:
    digest = descriptor.get("digest", "")
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64:
        raise LayoutError(f"{what}: digest {digest!r} is not sha256:<64 hex>")
    path = root / "blobs" / "sha256" / hexpart
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LayoutError(f"{what}: blob {digest} missing: {e}") from e
    if _digest(data) != digest:
        raise LayoutError(f"{what}: blob {digest} has digest {_digest(data)}")
    if descriptor.get("size") != len(data):
        raise LayoutError(f"{what}: size {descriptor.get('size')} but blob has {len(data)}")
    return data


def verify(root: Path, wasm: Path | None = None) -> dict:
    """Checks the layout at `root` the way a registry client would; returns the digests."""
    try:
        layout = json.loads((root / "oci-layout").read_text())
        index = json.loads((root / "index.json").read_text())
    except (OSError, ValueError) as e:
        raise LayoutError(f"{root}: not an OCI image layout: {e}") from e
    if layout.get("imageLayoutVersion") != "1.0.0":
        raise LayoutError(f"oci-layout: imageLayoutVersion {layout.get('imageLayoutVersion')!r}")
    if index.get("schemaVersion") != 2 or len(index.get("manifests", [])) != 1:
        raise LayoutError("index.json: schemaVersion 2 with exactly one manifest expected")
    entry = index["manifests"][0]
    if entry.get("mediaType") != MANIFEST_MEDIA_TYPE:
        raise LayoutError(f"index.json: manifest media type {entry.get('mediaType')!r}")
    manifest = json.loads(_blob(root, entry, "manifest"))
    if manifest.get("schemaVersion") != 2 or manifest.get("mediaType") != MANIFEST_MEDIA_TYPE:
        raise LayoutError("manifest: not an OCI image manifest (schemaVersion 2)")
    config = manifest.get("config", {})
    if config.get("mediaType") != CONFIG_MEDIA_TYPE:
        raise LayoutError(f"manifest: config media type {config.get('mediaType')!r}")
    json.loads(_blob(root, config, "config"))
    layers = manifest.get("layers", [])
    if len(layers) != 1 or layers[0].get("mediaType") != LAYER_MEDIA_TYPE:
        raise LayoutError(f"manifest: exactly one {LAYER_MEDIA_TYPE} layer expected")
    module = _blob(root, layers[0], "layer")
    if not module.startswith(WASM_MAGIC):
        raise LayoutError("layer: not a WebAssembly module")
    if wasm is not None and module != wasm.read_bytes():
        raise LayoutError(f"layer: differs from {wasm}")
    return {
        "manifest": entry["digest"],
        "wasm": layers[0]["digest"],
        "tag": entry.get("annotations", {}).get(REF_NAME, ""),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--wasm", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--tag", default=os.environ.get("MCPGW_WASM_TAG", "latest"))
    v = sub.add_parser("verify")
    v.add_argument("layout", type=Path)
    v.add_argument("--wasm", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            result = build(args.wasm, args.out, args.tag)
            verify(args.out, args.wasm)
        else:
            result = verify(args.layout, args.wasm)
    except (LayoutError, OSError) as e:
        print(f"wasm_oci: {e}", file=sys.stderr)
        return 1
    print(f"tag:              {result['tag']}")
    manifest, module = result["manifest"], result["wasm"]
    print(f"manifest digest:  {manifest}")
    print(f"wasm digest:      {module}")
    print(f"sha256 for oci://…:{result['tag']}: {manifest.split(':', 1)[1]}")
    print(f"sha256 for an https:// URL:  {module.split(':', 1)[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
