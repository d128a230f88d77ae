"""`actvsm mlehash`: the MLE hash SINIT measures for tboot with a given command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.banks import Bank
from builder.commands import common
from builder.errors import input_error
from builder.tboot.mlehash import load_mle
from builder.ui import emit


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "mlehash",
        parents=[common()],
        help="print the MLE hash of tboot with its command line (as lcp2_mlehash)",
        description="Compute what SINIT measures for tboot: its ELF image expanded, its "
        "command-line buffer filled with --cmdline, hashed with --alg.",
    )
    p.add_argument("file", type=Path, help="tboot image (tboot.gz or the ELF)")
    p.add_argument("--alg", default="sha256", choices=[b.value for b in Bank])
    p.add_argument(
        "--cmdline", default=None, help="tboot's command line (omit: leave the buffer as built)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        raise input_error(f"cannot read: {exc.strerror}", file=args.file) from None
    mle = load_mle(data, str(args.file))
    digest = mle.hash(args.cmdline, Bank(args.alg)).hex()
    result = {"alg": args.alg, "cmdline": args.cmdline, "file": str(args.file), "mle_hash": digest}
    emit(result, digest, as_json=args.json)
    return 0
