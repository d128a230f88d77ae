"""`actvsm policy create|show`: tboot Verified Launch Policies (what tb_polgen makes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.commands import common
from builder.errors import input_error
from builder.tboot.files import write_atomic
from builder.tboot.policyspec import load_policy_spec
from builder.tboot.vlp import Policy
from builder.ui import emit


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "policy",
        parents=[common()],
        help="create or show a tboot launch policy (VLP)",
        description="Create tboot's Verified Launch Policy from a YAML spec, byte-identical "
        "to tb_polgen's, or show what a policy file holds.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = actions.add_parser(
        "create", parents=[common()], help="write a policy from a YAML spec (see docs/launch.md)"
    )
    c.add_argument("spec", type=Path, help="YAML policy spec")
    c.add_argument("-o", "--output", type=Path, required=True, help="policy file to write")
    c.set_defaults(func=run_create)
    s = actions.add_parser("show", parents=[common()], help="print what a policy file holds")
    s.add_argument("file", type=Path, help="policy file (tb_polgen format)")
    s.set_defaults(func=run_show)


def run_create(args: argparse.Namespace) -> int:
    policy = load_policy_spec(args.spec)
    data = policy.to_bytes()
    out: Path = args.output
    write_atomic(out, data)
    result = policy.to_json() | {"file": str(out)}
    emit(result, f"wrote {out} ({len(data)} bytes)\n{policy.describe()}", as_json=args.json)
    return 0


def run_show(args: argparse.Namespace) -> int:
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        raise input_error(f"cannot read: {exc.strerror}", file=args.file) from None
    policy = Policy.from_bytes(data, str(args.file))
    emit(policy.to_json() | {"file": str(args.file)}, policy.describe(), as_json=args.json)
    return 0
