"""`actvsm build DEF -o OUTDIR`: run the pipeline into OUTDIR/<name>/ atomically."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from builder.cache import StageCache, default_cache_dir
from builder.commands import common
from builder.config import ImageDefinition, load_definition
from builder.errors import InputError
from builder.pipeline import build
from builder.platform import load_platform
from builder.stages.seal import SealTarget
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
    seal = p.add_argument_group(
        "sealing (where volume keys are sealed; default for a qemu-swtpm platform: the "
        "rig's own emulated TPM, created with the image under rig/tpm/)"
    )
    seal.add_argument(
        "--target-srk",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="seal offline to this TPM's storage key (tpm2_readpublic output, "
        "systemd's tpm2-srk-public-key.tpm2b_public, or PEM); repeat for a fleet",
    )
    seal.add_argument(
        "--tpm",
        metavar="TCTI",
        help="seal on a TPM present now, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321",
    )
    seal.add_argument(
        "--recovery-dir",
        type=Path,
        metavar="DIR",
        help="where recovery passphrases of volumes that ask for one are written "
        "(0600, once; never inside the output)",
    )
    p.set_defaults(func=run)


def seal_target(args: argparse.Namespace, defn: ImageDefinition) -> SealTarget | None:
    if args.tpm and args.target_srk:
        raise InputError("give --tpm or --target-srk, not both")
    recovery = args.recovery_dir.resolve() if args.recovery_dir else None
    if recovery is not None:
        out = args.output.resolve()
        if recovery == out or out in recovery.parents:
            raise InputError(
                "--recovery-dir must not be inside the output directory",
                hint="passphrases are secrets; keep them apart from the image",
            )
        if not recovery.is_dir():
            raise InputError(f"--recovery-dir {recovery} is not a directory")
    for srk in args.target_srk:
        if not srk.is_file():
            raise InputError(f"--target-srk {srk}: no such file")
    if args.tpm:
        return SealTarget("tpm", tcti=args.tpm, recovery_dir=recovery)
    if args.target_srk:
        return SealTarget(
            "srk", srk_files=tuple(p.resolve() for p in args.target_srk), recovery_dir=recovery
        )
    if load_platform(defn.platform).name.startswith("qemu-swtpm"):
        return SealTarget("rig", recovery_dir=recovery)
    return None


def run(args: argparse.Namespace) -> int:
    defn = load_definition(args.definition)
    cache = StageCache(None if args.no_cache else (args.cache_dir or default_cache_dir()))
    reporter = Reporter(quiet=args.quiet or args.json)
    target = seal_target(args, defn)
    result = build(
        defn,
        args.output,
        cache,
        reporter,
        show_output=None if not args.json else False,
        seal_target=target,
    )
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
