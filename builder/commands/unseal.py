"""`actvsm unseal VOLUME --tpm TCTI`: recover a sealed volume's key with the TPM present."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from builder.commands import common
from builder.errors import EXIT_OK, input_error
from builder.seal.unseal import unseal_volume
from builder.ui import emit


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "unseal",
        parents=[common()],
        help="unseal a volume's key with a TPM (policy checked by the TPM)",
        description=(
            "Unseal the key of a sealed LUKS2 volume from its actvsm-tpm2 token. The TPM "
            "releases it only when its PCRs are those of a mode allowed to open the volume. "
            "Prints nothing secret unless --key-file or --stdout asks for the key. Exit "
            "status 1 when the TPM refuses the policy."
        ),
    )
    p.add_argument("volume", type=Path, help="the LUKS2 image file or device")
    p.add_argument("--tpm", required=True, metavar="TCTI", help="e.g. device:/dev/tpmrm0")
    p.add_argument("--token", type=int, metavar="ID", help="use only this token")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--key-file", type=Path, metavar="F", help="write the key to a new 0600 file")
    out.add_argument("--stdout", action="store_true", help="write the raw key to stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.volume.exists():
        raise input_error("no such volume", file=args.volume)
    if args.stdout and args.json:
        raise input_error("--stdout and --json both want stdout", field="--stdout")
    if args.key_file is not None and args.key_file.exists():
        raise input_error("key file already exists; name a new one", file=args.key_file)
    result = unseal_volume(args.volume, args.tpm, args.token)
    if args.stdout:
        sys.stdout.buffer.write(result.secret)
        sys.stdout.buffer.flush()
        return EXIT_OK
    if args.key_file is not None:
        write_new_secret_file(args.key_file, result.secret)
    mode = result.mode or "unknown"
    emit(
        {"volume": str(args.volume), "token": result.token_id, "keyslot": result.keyslot,
         "mode": result.mode, "key_file": None if args.key_file is None else str(args.key_file)},
        f"unsealed {args.volume} (token {result.token_id}, keyslot {result.keyslot}, mode {mode})",
        as_json=args.json,
    )  # fmt: skip
    return EXIT_OK


def write_new_secret_file(path: Path, secret: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise input_error(f"cannot create key file: {exc.strerror}", file=path) from None
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
