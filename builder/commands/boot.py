"""`actvsm boot OUT [--mode M] [--state DIR]`: boot a build output in the QEMU + swtpm rig."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from builder.boot import DEFAULT_TIMEOUT, BootRequest, boot_output
from builder.commands import common
from builder.errors import InputError
from builder.rig.installer_boot import boot_installer
from builder.ui import emit


def register(sub: Any) -> None:
    p = sub.add_parser(
        "boot",
        parents=[common()],
        help="boot a built image in QEMU with a swtpm TPM",
        description="Boot OUT (a build output) in QEMU (-accel tcg) with a swtpm TPM. The "
        "rig performs the late launch SINIT and tboot would, from the files it boots, so "
        "a tampered file changes the PCRs. OUT is never modified: disks are qcow2 overlays "
        "and the TPM a copy of OUT/rig/tpm, in a state directory. Exit 0 when the "
        "workload's marker appears, 1 when the boot fails (the initramfs's FAILED line, "
        "tboot would halt, timeout), 2 on bad input.",
    )
    p.add_argument("output", type=Path, help="build output directory, e.g. out/default")
    p.add_argument("--mode", default=None, help="boot mode (default: the first one)")
    p.add_argument(
        "--state",
        type=Path,
        default=None,
        help="keep TPM state and disk overlays here across boots (default: a fresh one)",
    )
    p.add_argument(
        "--firmware",
        choices=("bios", "uefi"),
        default="bios",
        help="SeaBIOS or OVMF (default: bios)",
    )
    p.add_argument(
        "--installer",
        action="store_true",
        help="boot OUT/installer.img through the firmware, GRUB and tboot (GRUB picks "
        "--mode from its grubenv) instead of loading the kernel directly",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds before the guest is stopped (default {DEFAULT_TIMEOUT:.0f})",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise InputError(f"--timeout {args.timeout}: give a positive number of seconds")
    stream = sys.stderr if args.json else sys.stdout

    def show(line: str) -> None:
        print(line, file=stream, flush=True)

    if args.installer:
        rep = boot_installer(
            args.output, args.mode, args.firmware, args.state, args.timeout, on_line=show
        )
    else:
        req = BootRequest(
            out=args.output,
            mode=args.mode,
            state=args.state,
            firmware=args.firmware,
            timeout=args.timeout,
        )
        rep = boot_output(req, on_line=show)
    text = f"boot {rep.mode}: {rep.outcome}: {rep.message}"
    if rep.seconds_to_marker is not None:
        text += f" ({rep.seconds_to_marker:.1f} s to the marker"
        if rep.initramfs_seconds is not None:
            text += f", initramfs {rep.initramfs_seconds:.2f} s"
        text += ")"
    emit(rep.to_json(), text, as_json=args.json)
    return 0 if rep.ok else 1
