"""`actvsm validate DEF`: check an image definition without building anything."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from builder.commands import common
from builder.config import load_definition
from builder.ui import emit


def register(sub: Any) -> None:
    p = sub.add_parser(
        "validate",
        parents=[common()],
        help="check an image definition",
        description="Check an image definition strictly: unknown keys, types, sizes, files, "
        "names and cross-references. Exit 0 when valid, 2 with one message naming file, "
        "line and field when not.",
    )
    p.add_argument("definition", type=Path, help="image definition (YAML)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    defn = load_definition(args.definition)
    summary: dict[str, Any] = {
        "valid": True,
        "name": defn.name,
        "definition": str(defn.path),
        "definition_sha256": defn.digest,
        "modes": [m.name for m in defn.modes],
        "volumes": [v.name for v in defn.volumes],
        "platform": defn.platform.stem,
        "integrity": defn.integrity,
    }
    text = (
        f"{args.definition}: valid: image '{defn.name}', modes {', '.join(summary['modes'])}, "
        f"{len(defn.volumes)} volume(s), platform {defn.platform.stem}, {defn.integrity}"
    )
    emit(summary, text, as_json=args.json)
    return 0
