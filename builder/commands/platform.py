"""`actvsm platform show|capture`: platform profiles for PCR 17/18 prediction."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from builder.commands import common
from builder.errors import input_error
from builder.platform import Platform, load_platform, platform_from_yaml, platform_to_yaml_obj
from builder.tboot.files import write_atomic
from builder.tboot.txtlog import capture_platform
from builder.ui import emit


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "platform",
        parents=[common()],
        help="show or capture a platform profile (what SINIT and the hardware extend)",
        description="Platform profiles hold the late-launch events of one hardware model.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = actions.add_parser("show", parents=[common()], help="validate and print a profile")
    s.add_argument("profile", help="profile name (images/platforms/NAME.yaml) or path")
    s.set_defaults(func=run_show)
    c = actions.add_parser(
        "capture",
        parents=[common()],
        help="build a profile from a binary TPM 2.0 TXT event log",
    )
    c.add_argument("log", type=Path, help="binary TCG crypto-agile event log")
    c.add_argument("--name", required=True, help="profile name")
    c.add_argument("-o", "--output", type=Path, required=True, help="profile YAML to write")
    c.set_defaults(func=run_capture)


def _summary(p: Platform) -> str:
    lines = [
        f"{p.name}: TPM {p.tpm}, {p.mapping} mapping, extpol {p.extpol}, banks "
        + ",".join(b.value for b in p.banks),
        "  PCR 17 HASH_START",
    ]
    lines += [f"  PCR {e.pcr} {e.name}" for e in p.events]
    return "\n".join(lines)


def run_show(args: argparse.Namespace) -> int:
    p = load_platform(args.profile)
    emit(platform_to_yaml_obj(p), _summary(p), as_json=args.json)
    return 0


def run_capture(args: argparse.Namespace) -> int:
    try:
        blob = Path(args.log).read_bytes()
    except OSError as exc:
        raise input_error(f"cannot read: {exc.strerror}", file=args.log) from None
    p = capture_platform(blob, name=args.name, source=Path(args.log).name)
    obj = platform_to_yaml_obj(p)
    text = yaml.safe_dump(obj, sort_keys=False, width=200)
    platform_from_yaml(yaml.safe_load(text), args.output)  # what we write must load
    out: Path = args.output
    header = f"# Captured by actvsm platform capture from {Path(args.log).name}\n"
    write_atomic(out, (header + text).encode())
    emit(obj | {"file": str(out)}, f"wrote {out}\n" + _summary(p), as_json=args.json)
    return 0
