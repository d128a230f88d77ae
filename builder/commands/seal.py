"""`actvsm seal NAME ...`: make one sealed LUKS2 volume outside a full build;
`actvsm reseal VOLUME ...`: bind an existing volume's key to new predicted PCRs.

For admins (seal to the TPM in front of them) and CI (seal offline to a fleet's SRKs);
`actvsm build` calls the same library (builder.seal.make_volume).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.banks import parse_bank
from builder.commands import common
from builder.errors import EXIT_OK, input_error
from builder.seal.inputs import load_predicted, parse_pcrs, parse_size
from builder.seal.policy import Predicted
from builder.seal.reseal import reseal_volume
from builder.seal.sealer import LocalTpm, OfflineTargets, Sealer
from builder.seal.spec import DEFAULT_PCRS, FsType, PolicySpec, VolumeSpec
from builder.seal.srk import SrkAlg
from builder.seal.volume import make_volume
from builder.ui import emit


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "seal",
        parents=[common()],
        help="make a LUKS2 volume whose key is sealed to the PCRs of allowed modes",
        description=(
            "Create OUTDIR/NAME.luks: a LUKS2 volume with a random key, sealed with the TPM "
            "(--tpm) or offline to target SRK public areas (--target-srk, one token each), "
            "under a policy of PolicyPCR per allowed mode and PolicyOR over the modes."
        ),
    )
    p.add_argument("name", help="volume name (file OUTDIR/NAME.luks)")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="OUTDIR")
    p.add_argument("--size", required=True, help="image size, e.g. 64M (header included)")
    _policy_args(p)
    p.add_argument("--fs", choices=[f.value for f in FsType], default=FsType.NONE.value)
    p.add_argument("--content", type=Path, metavar="DIR", help="initial content (needs --fs ext4)")
    p.add_argument("--recovery-file", type=Path, metavar="F", help="new 0600 file for a passphrase")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tpm", metavar="TCTI", help="seal with this TPM")
    where.add_argument(
        "--target-srk", type=Path, action="append", metavar="FILE",
        help="seal offline to this SRK public area (repeat for a fleet)",
    )  # fmt: skip
    p.add_argument(
        "--srk-alg", choices=[a.value for a in SrkAlg], default="ecc",
        help="SRK type with --tpm when none is persistent at 0x81000001",
    )  # fmt: skip
    p.set_defaults(func=run)
    register_reseal(sub)


def _policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modes", required=True, help="modes allowed to open it, e.g. normal,admin")
    p.add_argument(
        "--predicted", type=Path, required=True, metavar="FILE",
        help='JSON {"mode": {"PCR": "hex", ...}} of predicted values',
    )  # fmt: skip
    p.add_argument("--pcrs", default=",".join(map(str, DEFAULT_PCRS)), help="PCRs in the policy")
    p.add_argument("--bank", default="sha256", help="PCR bank of the policy")


def register_reseal(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "reseal",
        parents=[common()],
        help="re-bind a sealed volume's key to new predicted PCRs (before an update)",
        description=(
            "Unseal VOLUME's key with the TPM present (the machine must be in a mode allowed "
            "to open it), seal it again to the new predicted values of --modes (for this TPM "
            "or --target-srk files), and replace the volume's actvsm-tpm2 tokens."
        ),
    )
    p.add_argument("volume", type=Path)
    p.add_argument("--tpm", required=True, metavar="TCTI", help="the TPM that unseals now")
    _policy_args(p)
    p.add_argument("--target-srk", type=Path, action="append", metavar="FILE",
                   help="seal the new tokens offline for these SRKs instead")  # fmt: skip
    p.set_defaults(func=run_reseal)


def _policy(args: argparse.Namespace) -> tuple[PolicySpec, Predicted, tuple[str, ...]]:
    try:
        bank = parse_bank(args.bank)
    except ValueError as exc:
        raise input_error(str(exc), field="--bank") from None
    policy = PolicySpec(parse_pcrs(args.pcrs, field="--pcrs"), bank)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    return policy, load_predicted(args.predicted, bank), modes


def run_reseal(args: argparse.Namespace) -> int:
    if not args.volume.exists():
        raise input_error("no such volume", file=args.volume)
    policy, predicted, modes = _policy(args)
    sealer: Sealer = OfflineTargets(args.target_srk) if args.target_srk else LocalTpm(args.tpm)
    digest, tokens = reseal_volume(args.volume, args.tpm, predicted, modes, sealer, policy=policy)
    emit(
        {"volume": str(args.volume), "modes": list(modes), "policy-hash": digest.hex(),
         "tokens": [t.__dict__ for t in tokens]},
        f"resealed {args.volume}: modes {', '.join(modes)}, {len(tokens)} token(s)",
        as_json=args.json,
    )  # fmt: skip
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    policy, predicted, modes = _policy(args)
    spec = VolumeSpec(
        name=args.name,
        size=parse_size(args.size, field="--size"),
        modes=modes,
        fs=FsType(args.fs),
        content=args.content,
        recovery_file=args.recovery_file,
    )
    if not args.out.is_dir():
        raise input_error("output directory does not exist", file=args.out)
    sealer: Sealer = (
        LocalTpm(args.tpm, SrkAlg(args.srk_alg)) if args.tpm else OfflineTargets(args.target_srk)
    )
    art = make_volume(spec, predicted, sealer, args.out, policy=policy)
    emit(
        art.to_json(),
        f"sealed {art.path}: modes {', '.join(art.modes)}, {len(art.tokens)} token(s), "
        f"policy {art.policy_hash.hex()[:16]}..",
        as_json=args.json,
    )
    return EXIT_OK
