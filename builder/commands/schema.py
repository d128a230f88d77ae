"""`actvsm schema --markdown`: the image definition reference, from the settings table."""

from __future__ import annotations

import argparse
from typing import Any

from builder.commands import common
from builder.config import reference_markdown


def register(sub: Any) -> None:
    p = sub.add_parser(
        "schema",
        parents=[common()],
        help="print the image definition reference",
        description="Print the reference of every image definition field (Markdown), "
        "generated from the same table that validates definitions.",
    )
    p.add_argument("--markdown", action="store_true", help="Markdown (the default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(reference_markdown(), end="")
    return 0
