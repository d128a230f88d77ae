"""`actvsm flash IMAGE DEVICE`: write the installer image to a USB stick and verify it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from builder import flash
from builder.commands import common
from builder.errors import InputError
from builder.ui import emit

EPILOG = """exit status:
  0  written and verified (or, with --verify-only, the device holds the image)
  2  refused or bad input: not a whole removable/USB disk, mounted, holds the running
     system, too small, not confirmed, or the image does not match its .sha256
  3  writing or syncing the device failed (it now holds a partial image)
  4  the bytes read back differ from the image
  1  any other failure
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "flash",
        parents=[common()],
        help="write the installer image to a USB stick and verify it",
        description="Write IMAGE (installer.img, or installer.img.zst decompressed on the fly) "
        "to the whole disk DEVICE, sync, read it back and compare sha256 digests. Refuses "
        "partitions, internal (non-removable, non-USB) disks, mounted disks, the disks of "
        "/, /boot and swap, and disks smaller than the image. Asks for confirmation unless "
        "--yes. If IMAGE.sha256 exists the image is checked against it first.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", type=Path, help="installer.img or installer.img.zst")
    p.add_argument("device", type=Path, help="the USB stick's whole disk, e.g. /dev/sdb")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--allow-file",
        action="store_true",
        help="also accept a regular file or a loop device as DEVICE (for tests)",
    )
    p.add_argument(
        "--verify-only",
        action="store_true",
        help="write nothing: check that DEVICE already holds IMAGE (exit 4 if not)",
    )
    p.set_defaults(func=run)


def confirm(target: flash.Target, image: flash.Image) -> None:
    """Ask on stderr, read one line from stdin: the device's name or 'yes' goes ahead."""
    accepted = {"yes", target.name, str(target.path)}
    sys.stderr.write(
        f"About to write {image.path.name} ({image.size} bytes) to {target.path} "
        f"({target.size} bytes). EVERYTHING on {target.path} will be lost.\n"
        f"Type '{target.name}' or 'yes' to continue: "
    )
    sys.stderr.flush()
    answer = sys.stdin.readline().strip()
    if answer not in accepted:
        raise InputError(
            f"not confirmed (answer {answer!r}): nothing was written to {target.path}",
            hint=f"type '{target.name}' or 'yes', or pass --yes",
        )


def run(args: argparse.Namespace) -> int:
    image = flash.open_image(args.image)
    target = flash.examine(args.device)
    state = flash.system_state()
    if args.verify_only:  # reading a mounted disk is harmless
        state = flash.SystemState()
    reason = flash.refusal(target, image_size=image.size, allow_file=args.allow_file, state=state)
    if reason is not None:
        raise InputError(f"refusing to flash: {reason[0]}", hint=reason[1])
    if not args.yes and not args.verify_only:
        confirm(target, image)
    result = flash.flash(image, target, verify_only=args.verify_only, quiet=False)
    verb = "holds" if args.verify_only else "written and verified:"
    emit(
        result.to_json(),
        f"{target.path} {verb} {image.path.name} ({result.bytes} bytes, sha256 {result.sha256})",
        as_json=args.json,
    )
    return 0
