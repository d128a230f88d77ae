"""Subcommands: each module here defines `register(subparsers)`; the CLI finds them all.

A module adds its parser with `parents=[common()]` (for --json and --debug) and sets
`func` to a function taking the parsed namespace and returning the exit status.
"""

from __future__ import annotations

import argparse


def common() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--json", action="store_true", help="print a machine-readable result on stdout"
    )
    parent.add_argument(
        "--debug", action="store_true", help="log every command run and show tracebacks"
    )
    return parent
