"""The `actvsm` command line: finds the subcommands and turns errors into exit statuses."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import traceback
from collections.abc import Sequence

import builder.commands
from builder import __version__
from builder.errors import EXIT_BAD_INPUT, EXIT_FAILED, ActvsmError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actvsm",
        description="Build measured, bootable appliance images and audit their expected PCRs.",
    )
    parser.add_argument("--version", action="version", version=f"actvsm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(builder.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"builder.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "debug", False):
        os.environ["ACTVSM_DEBUG"] = "1"
    as_json = getattr(args, "json", False)
    try:
        status: int = args.func(args)
        return status
    except ActvsmError as err:
        if as_json:
            sys.stdout.write(json.dumps(err.to_json(), sort_keys=True) + "\n")
        print(f"actvsm: error: {err}", file=sys.stderr)
        if err.hint:
            print(f"  hint: {err.hint}", file=sys.stderr)
        if getattr(args, "debug", False):
            traceback.print_exc()
        return err.exit_status
    except KeyboardInterrupt:
        print("actvsm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["main", "build_parser", "EXIT_BAD_INPUT"]
