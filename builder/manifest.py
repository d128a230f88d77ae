"""manifest.json: the auditor's file. Canonical JSON, versioned, with a schema in docs/.

It lists every artifact (size and digest in every bank), the definition's digest, the
platform profile, the verity data, and, per mode and bank, the predicted events and
PCR values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from builder.banks import ALL_BANKS
from builder.config import ImageDefinition
from builder.digest import file_digests
from builder.errors import input_error
from builder.ui import canonical_json

FORMAT = "actvsm-manifest"
VERSION = 1


def artifact_entry(path: Path, known: Mapping[str, Any] | None = None) -> dict[str, Any]:
    if known is not None:
        return {"size": known["size"], "digests": dict(known["digests"])}
    size, digests = file_digests(path, ALL_BANKS)
    return {"size": size, "digests": {b.value: d.hex() for b, d in digests.items()}}


def build_manifest(
    defn: ImageDefinition,
    artifacts: Mapping[str, Path],
    facts: Mapping[str, Any],
    known: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest; `known` holds digests already computed (of cached artifacts)."""
    entries: dict[str, Any] = {}
    for name, path in sorted(artifacts.items()):
        entries[name] = artifact_entry(path, (known or {}).get(name))
    platform_bytes = defn.platform.read_bytes()
    import hashlib

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "image": {
            "name": defn.name,
            "definition": defn.path.name,
            "definition_sha256": defn.digest,
            "integrity": defn.integrity,
            "source_date_epoch": defn.source_date_epoch,
        },
        "platform": {
            "name": defn.platform.stem,
            "sha256": hashlib.sha256(platform_bytes).hexdigest(),
        },
        "artifacts": entries,
    }
    if "verity" in facts:
        manifest["verity"] = dict(facts["verity"])
    for key in ("modes", "volumes", "inputs", "launch", "installer"):
        if key in facts:
            manifest[key] = facts[key]
    return manifest


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    path.write_text(canonical_json(manifest), encoding="utf-8")


def load_manifest(path: Path) -> dict[str, Any]:
    """Read a manifest (or OUTDIR/<name>/ holding one) and check its format and version."""
    if path.is_dir():
        path = path / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise input_error(
            "no such manifest", file=path, hint="give OUTDIR/<name> or its manifest.json"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise input_error(f"not a JSON manifest: {exc}", file=path) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise input_error(
            f"not an actvsm manifest (format is not '{FORMAT}')", file=path, field="format"
        )
    if data.get("version") != VERSION:
        raise input_error(
            f"manifest version {data.get('version')!r} is not supported (this reads {VERSION})",
            file=path,
            field="version",
        )
    return data
