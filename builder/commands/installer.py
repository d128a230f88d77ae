"""`actvsm installer`: assemble the GPT installer disk image from files already built."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from builder import installer
from builder.commands import common
from builder.errors import InputError
from builder.ui import emit


def _pair(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PATH")
    return name, Path(path)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "installer",
        parents=[common()],
        help="assemble the installer disk image from built files",
        description="Assemble a GPT disk image (BIOS boot partition with GRUB's core.img, "
        "ESP with GRUB for x86_64 UEFI, an ext2 boot partition, the base image, its verity "
        "tree and the volumes) without mounting anything. The same inputs give the same "
        "bytes. Writes OUT, OUT.sha256 and, unless --no-compress, OUT.zst and OUT.zst.sha256.",
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="image file to write")
    p.add_argument("--name", required=True, help="image name (seeds the disk's GUIDs)")
    p.add_argument(
        "--boot-uuid",
        help="file system UUID of the boot partition; the grub.cfg files must search for "
        "it (default: derived from --name; print it with --print-boot-uuid)",
    )
    p.add_argument("--print-boot-uuid", action="store_true", help="print the UUID and exit")
    p.add_argument("--grub-bios", type=Path, help="grub.cfg for BIOS boot")
    p.add_argument("--grub-uefi", type=Path, help="grub.cfg for UEFI boot")
    p.add_argument(
        "--boot-file",
        type=_pair,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a file for the boot partition (tboot.gz, vmlinuz, initrd.img, acm/X.bin...)",
    )
    p.add_argument("--base", type=Path, help="the base image (squashfs/erofs)")
    p.add_argument("--verity", type=Path, help="the base image's dm-verity hash tree")
    p.add_argument(
        "--volume", type=_pair, action="append", default=[], metavar="NAME=PATH", help="a volume"
    )
    p.add_argument("--epoch", type=int, default=0, help="timestamp of every file (seconds)")
    p.add_argument("--no-compress", action="store_true", help="skip the .zst copy")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    boot_uuid = args.boot_uuid or installer.derive_boot_uuid(args.name.encode())
    if args.print_boot_uuid:
        emit({"boot_uuid": boot_uuid}, boot_uuid, as_json=args.json)
        return 0
    missing = [
        opt
        for opt, value in [("--grub-bios", args.grub_bios), ("--grub-uefi", args.grub_uefi)]
        + [("--base", args.base)]
        if value is None
    ]
    if missing:
        raise InputError(f"missing {', '.join(missing)}", hint="see actvsm installer --help")
    configs = {}
    for fw, path in (("bios", args.grub_bios), ("uefi", args.grub_uefi)):
        try:
            configs[fw] = path.read_text()
        except OSError as exc:
            raise InputError(f"cannot read the {fw} grub.cfg {path}: {exc.strerror}") from None
    spec = installer.InstallerInput(
        name=args.name,
        boot_uuid=boot_uuid,
        grub_configs=configs,
        boot_files=dict(args.boot_file),
        base=args.base,
        verity=args.verity,
        volumes=list(args.volume),
        epoch=args.epoch,
    )
    image = installer.assemble(spec, args.output, compress=not args.no_compress)
    lines = [f"{image.path}: {image.size} bytes, sha256 {image.sha256}"]
    lines += [
        f"  {p.part.label:<12} {p.start // 512:>10} {p.part.size // 512:>10}  {p.part.uuid}"
        for p in image.partitions
    ]
    if image.compressed is not None:
        lines.append(f"{image.compressed}: sha256 {image.compressed_sha256}")
    emit(image.to_json(), "\n".join(lines), as_json=args.json)
    return 0
