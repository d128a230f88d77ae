"""`actvsm manifest show OUT`: the predicted PCRs per mode, with the events behind each."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from builder.commands import common
from builder.manifest import load_manifest
from builder.manifest_diff import short
from builder.ui import emit


def register(sub: Any) -> None:
    p = sub.add_parser("manifest", help="read a manifest", description="Read a manifest.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    show = verbs.add_parser(
        "show",
        parents=[common()],
        help="print predicted PCRs per mode with the components behind each",
        description="Print, per mode and bank, each predicted PCR value and the ordered events "
        "(what was measured, from which input) that produce it.",
    )
    show.add_argument("manifest", type=Path, help="manifest.json or OUTDIR/<name>")
    show.add_argument("--mode", help="only this mode")
    show.add_argument("--bank", help="only this bank (e.g. sha256)")
    show.set_defaults(func=run_show)


def render(manifest: dict[str, Any], mode_filter: str | None, bank_filter: str | None) -> str:
    image = manifest["image"]
    lines = [
        f"image {image['name']} (definition sha256 {short(image['definition_sha256'])}), "
        f"platform {manifest['platform']['name']}",
    ]
    if "verity" in manifest:
        lines.append(f"verity root hash {manifest['verity']['root_hash']}")
    for mode, data in sorted(manifest.get("modes", {}).items()):
        if mode_filter and mode != mode_filter:
            continue
        lines.append("")
        lines.append(f"mode {mode}" + ("" if data.get("keys", True) else " (recovery: no keys)"))
        for bank, pcrs in sorted(data.get("pcrs", {}).items()):
            if bank_filter and bank != bank_filter:
                continue
            for pcr_s, value in sorted(pcrs.items(), key=lambda kv: int(kv[0])):
                lines.append(f"  {bank} PCR {pcr_s:>2} = {value}")
                for ev in data.get("events", []):
                    if ev["pcr"] == int(pcr_s) and bank in ev["digests"]:
                        src = f"  [{ev['source']}]" if ev.get("source") else ""
                        lines.append(
                            f"      {short(ev['digests'][bank])}  {ev['description']}{src}"
                        )
    for name, vol in sorted(manifest.get("volumes", {}).items()):
        lines.append("")
        lines.append(
            f"volume {name}: modes {', '.join(vol['modes'])}; {vol['bank']} PCRs "
            f"{','.join(str(p) for p in vol['pcrs'])}; policy {short(vol.get('policy', ''))}"
        )
    for name, art in sorted(manifest.get("artifacts", {}).items()):
        if not lines[-1].startswith("artifact") and not lines[-1] == "":
            lines.append("")
        lines.append(f"artifact {name}: {art['size']} bytes, sha256 {art['digests']['sha256']}")
    return "\n".join(lines)


def run_show(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.manifest)
    emit(manifest, render(manifest, args.mode, args.bank), as_json=args.json)
    return 0
