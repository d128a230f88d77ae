"""`actvsm diff A B`: which PCR changed, in which mode, because of which input."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from builder.commands import common
from builder.manifest import load_manifest
from builder.manifest_diff import diff_manifests
from builder.ui import emit


def register(sub: Any) -> None:
    p = sub.add_parser(
        "diff",
        parents=[common()],
        help="compare two manifests",
        description="Compare two manifests (files or build output directories). For each mode "
        "and PCR that differs, say which inputs changed and how, and which volumes' policies "
        "that breaks. Exit 0 when equal, 1 when different, 2 on bad input.",
    )
    p.add_argument("old", type=Path, help="manifest.json or OUTDIR/<name>")
    p.add_argument("new", type=Path, help="manifest.json or OUTDIR/<name>")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = diff_manifests(load_manifest(args.old), load_manifest(args.new))
    text = "manifests are equal" if result.equal else "\n".join(result.lines())
    emit(result.to_json(), text, as_json=args.json)
    return 0 if result.equal else 1
