"""`actvsm verify OUT`: re-derive the manifest from the artifacts and compare."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from builder.commands import common
from builder.ui import emit
from builder.verify import verify_output


def register(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        parents=[common()],
        help="re-derive a manifest from the artifacts and compare",
        description="Recompute every artifact's digests, check the base against its verity "
        "tree, re-derive the launch policy, each mode's events and PCRs from the files and "
        "the GRUB configuration on disk, and the volumes' policies from their LUKS headers, "
        "then compare with manifest.json. Exit 0 when it matches, 1 when not, 2 on bad input.",
    )
    p.add_argument("output", type=Path, help="OUTDIR/<name> (or its manifest.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = verify_output(args.output)
    if report.ok:
        text = "verified: " + "; ".join(report.checked)
    else:
        text = "\n".join(f"MISMATCH: {p}" for p in report.problems)
    emit(report.to_json(), text, as_json=args.json)
    return 0 if report.ok else 1
