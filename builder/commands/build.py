"""`actvsm build DEF -o OUTDIR`: run the pipeline into OUTDIR/<name>/ atomically."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from builder.cache import StageCache, default_cache_dir
from builder.commands import common
from builder.config import load_definition
from builder.pipeline import build
from builder.ui import Reporter, emit


def register(sub: Any) -> None:
    p = sub.add_parser(
        "build",
        parents=[common()],
        help="build an image",
        description="Build the image a definition describes into OUTDIR/<name>/: base image "
        "and verity tree, boot files, launch policies, predicted PCRs, sealed volumes, "
        "installer and manifest.json. The output appears whole or not at all. "
        "Exit 0 on success, 2 on bad input, 1 when a step fails.",
    )
    p.add_argument("definition", type=Path, help="image definition (YAML)")
    p.add_argument(
        "-o", "--output", type=Path, default=Path("out"), help="output directory (default: out)"
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="stage cache (default: $ACTVSM_CACHE_DIR or ~/.cache/actvsm)",
    )
    p.add_argument("--no-cache", action="store_true", help="rebuild every stage, store nothing")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    defn = load_definition(args.definition)
    cache = StageCache(None if args.no_cache else (args.cache_dir or default_cache_dir()))
    reporter = Reporter(quiet=args.quiet or args.json)
    result = build(defn, args.output, cache, reporter, show_output=None if not args.json else False)
    summary = {
        "name": defn.name,
        "output": str(result.outdir),
        "manifest": str(result.outdir / "manifest.json"),
        "artifacts": result.manifest["artifacts"],
        "verity_root_hash": result.manifest.get("verity", {}).get("root_hash"),
        "stages": {
            name: {"seconds": round(secs, 3)} for name, secs in sorted(result.timings.items())
        },
        "cached": result.cached,
        "seconds": round(reporter.elapsed(), 3),
    }
    lines = [f"built {defn.name} in {reporter.elapsed():.1f}s -> {result.outdir}"]
    for name, art in sorted(result.manifest["artifacts"].items()):
        lines.append(
            f"  {name:24} {art['size']:>12} bytes  sha256 {art['digests']['sha256'][:16]}.."
        )
    if summary["verity_root_hash"]:
        lines.append(f"  verity root hash {summary['verity_root_hash']}")
    emit(summary, "\n".join(lines), as_json=args.json)
    return 0
