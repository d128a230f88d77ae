"""The installer disk's layout and boot sectors, as pure computations on bytes.

GPT partitions are placed at 1 MiB boundaries; `sfdisk_script` describes them for
`sfdisk`, which writes the protective MBR and both GPT copies. For BIOS boot,
GRUB's boot.img goes to LBA 0 and its core.img into the BIOS boot partition; the two
are linked the way `grub-bios-setup` links them (facts from GRUB's boot.h/setup.c):

- boot.img keeps the disk's bytes 440..511 (disk signature, partition table, 0x55AA),
  its 8-byte little-endian field at 0x5c holds the LBA of core.img's first sector,
  and the 2-byte jump at 0x66 (the "boot drive check") becomes two NOPs on hard disks
  so a BIOS that passes a wrong drive number still works.
- core.img's first sector (diskboot.img) ends with a 12-byte blocklist entry at 500:
  u64 start LBA, u16 sector count, u16 load segment. grub-mkimage fills the count
  (sectors after the first) and segment 0x820; the start is the LBA of core.img's
  second sector. The entry before it (at 488) stays zero and ends the list.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

SECTOR = 512
MiB = 1 << 20
ALIGN = MiB  # partition starts and sizes
GPT_TAIL = MiB  # room after the last partition for the backup GPT (needs 33 sectors)

# GPT partition type GUIDs (UEFI spec; systemd's Discoverable Partitions Specification).
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
XBOOTLDR = "BC13C2FF-59E6-4262-A352-B275FD6F7172"
ROOT_X86_64 = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
ROOT_VERITY_X86_64 = "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5"
LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"

MBR_KEEP_FROM = 440  # boot.img code ends here; disk signature + table follow
KERNEL_SECTOR_OFFSET = 0x5C
DRIVE_CHECK_OFFSET = 0x66
BLOCKLIST_OFFSET = SECTOR - 12
CORE_SEGMENT = 0x820

_LABEL = re.compile(r"[A-Za-z0-9_.-]{1,36}")
_GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


class LayoutError(ValueError):
    """A layout or boot sector that cannot be made (the caller turns it into an error)."""


@dataclass(frozen=True)
class Partition:
    """One GPT partition: `label` is its GPT name, `size` in bytes (rounded up to MiB)."""

    label: str
    type_guid: str
    size: int
    uuid: str


@dataclass(frozen=True)
class Placed:
    part: Partition
    start: int  # byte offset

    @property
    def end(self) -> int:
        return self.start + self.part.size

    @property
    def start_lba(self) -> int:
        return self.start // SECTOR

    @property
    def size_lba(self) -> int:
        return self.part.size // SECTOR


def round_up(value: int, unit: int = ALIGN) -> int:
    return -(-value // unit) * unit


def place(parts: Sequence[Partition]) -> tuple[list[Placed], int]:
    """Partitions back to back from 1 MiB, each MiB-aligned; returns them and the disk size."""
    labels = [p.label for p in parts]
    if len(set(labels)) != len(labels):
        raise LayoutError(f"partition labels must be unique: {labels}")
    if len(parts) > 128:
        raise LayoutError("a GPT holds at most 128 partitions")
    placed: list[Placed] = []
    offset = ALIGN
    for p in parts:
        if not _LABEL.fullmatch(p.label):
            raise LayoutError(f"partition label {p.label!r}: use 1-36 of A-Z a-z 0-9 _ . -")
        for guid in (p.type_guid, p.uuid):
            if not _GUID.fullmatch(guid):
                raise LayoutError(f"partition {p.label}: {guid!r} is not a GUID")
        if p.size <= 0 or p.size % ALIGN:
            raise LayoutError(f"partition {p.label}: size {p.size} is not a positive whole MiB")
        placed.append(Placed(p, offset))
        offset += p.size
    return placed, offset + GPT_TAIL


def sfdisk_script(placed: Sequence[Placed], disk_guid: str) -> str:
    """Input for `sfdisk IMAGE`: a GPT with fixed GUIDs, so the table is reproducible."""
    if not _GUID.fullmatch(disk_guid):
        raise LayoutError(f"disk GUID {disk_guid!r} is not a GUID")
    lines = [
        "label: gpt",
        f"label-id: {disk_guid.upper()}",
        "unit: sectors",
        f"first-lba: {ALIGN // SECTOR}",
        "sector-size: 512",
        "",
    ]
    for p in placed:
        lines.append(
            f"start={p.start_lba}, size={p.size_lba}, type={p.part.type_guid.upper()}, "
            f'uuid={p.part.uuid.upper()}, name="{p.part.label}"'
        )
    return "\n".join(lines) + "\n"


def grub_boot_sector(boot_img: bytes, disk_mbr: bytes, core_lba: int) -> bytes:
    """GRUB's boot.img made into this disk's MBR, pointing at core.img at `core_lba`."""
    if len(boot_img) != SECTOR or boot_img[510:512] != b"\x55\xaa":
        raise LayoutError("boot.img must be one 512-byte sector ending in 55 AA")
    if len(disk_mbr) != SECTOR:
        raise LayoutError("the disk's MBR must be one 512-byte sector")
    if not 0 < core_lba < 1 << 64:
        raise LayoutError(f"core.img sector {core_lba} out of range")
    out = bytearray(boot_img)
    struct.pack_into("<Q", out, KERNEL_SECTOR_OFFSET, core_lba)
    out[DRIVE_CHECK_OFFSET : DRIVE_CHECK_OFFSET + 2] = b"\x90\x90"
    out[MBR_KEEP_FROM:] = disk_mbr[MBR_KEEP_FROM:]
    return bytes(out)


def grub_core_image(core_img: bytes, core_lba: int, room: int) -> bytes:
    """core.img with its first blocklist entry pointing at its own sectors at `core_lba`."""
    sectors = -(-len(core_img) // SECTOR)
    if sectors < 2:
        raise LayoutError("core.img is shorter than two sectors: not a GRUB i386-pc core image")
    if sectors * SECTOR > room:
        raise LayoutError(
            f"core.img needs {sectors * SECTOR} bytes but the BIOS boot partition has {room}"
        )
    start, count, segment = struct.unpack_from("<QHH", core_img, BLOCKLIST_OFFSET)
    if count != sectors - 1 or segment != CORE_SEGMENT:
        raise LayoutError(
            f"core.img's blocklist says {count} sectors at segment {segment:#x}, expected "
            f"{sectors - 1} at {CORE_SEGMENT:#x}: not made by grub-mkimage -O i386-pc?"
        )
    out = bytearray(core_img.ljust(sectors * SECTOR, b"\0"))
    struct.pack_into("<Q", out, BLOCKLIST_OFFSET, core_lba + 1)
    return bytes(out)
