"""Inputs for installer tests: the host's kernel and tboot, a busybox initramfs that
prints the guest's PCR 17-19 and a marker and powers off, small stand-in base,
verity and volume files, and the GRUB configurations rendered by builder.tboot.grub."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder import installer
from builder.banks import Bank
from builder.initramfs_archive import Archive, Compression
from builder.rig.console import print_pcrs_script
from builder.tboot import grub

MARKER = "ACTVSM-INSTALLER-BOOTED"
MODES = ("normal", "admin", "update")
EPOCH = 1_700_000_000
BUSYBOX = Path("/bin/busybox")

PCR_BANKS = (Bank.SHA1, Bank.SHA256)
INIT = (
    "#!/bin/busybox sh\n"
    "/bin/busybox mkdir -p /proc /sys\n"
    "/bin/busybox mount -t proc proc /proc\n"
    "/bin/busybox --install -s /bin\n"
    "export PATH=/bin\n"
    "mount -t sysfs sys /sys\n"
    + print_pcrs_script((17, 18, 19), PCR_BANKS)
    + f'echo "{MARKER} $(cat /proc/cmdline)"\n'
    "poweroff -f\n"
)


def host_kernel() -> Path:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        pytest.fail("no /boot/vmlinuz-*: apt-get install linux-image-amd64")
    return kernels[-1]


@dataclass(frozen=True)
class Inputs:
    spec: installer.InstallerInput
    root_hash: str


def make_inputs(
    work: Path, *, name: str = "installer-test", default: str = "normal", grub_timeout: int = 0
) -> Inputs:
    """Build every input under `work` (a fresh directory per call)."""
    work.mkdir(parents=True, exist_ok=True)
    if not BUSYBOX.is_file():
        pytest.fail("no /bin/busybox: apt-get install busybox-static")
    archive = Archive()
    archive.add_basic_devices()
    archive.add_bytes("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    archive.add_bytes("init", INIT.encode(), 0o755)
    (work / "initrd.img").write_bytes(archive.build(Compression.GZIP, mtime=EPOCH))
    base = work / "base.squashfs"
    base.write_bytes(hashlib.sha256(b"base").digest() * 40_000)  # 1.25 MiB, not aligned
    verity = work / "base.verity"
    verity.write_bytes(b"verity tree" * 500)
    volume = work / "data.luks"
    volume.write_bytes(bytes(3 << 20) + b"LUKS tail")  # zeros first: written sparse
    (work / "vl.pol").write_bytes(b"\x02\x00\x0b" + bytes(9))
    (work / "provision-vlp.sh").write_text("#!/bin/sh\necho provision\n")

    root_hash = hashlib.sha256(base.read_bytes()).hexdigest()
    boot_uuid = installer.derive_boot_uuid(root_hash.encode())
    cmdlines = {
        m: grub.kernel_cmdline("console=ttyS0 panic=-1", root_hash=root_hash, mode=m) for m in MODES
    }
    entries = grub.mode_entries(
        cmdlines,
        image=name,
        tboot="tboot.gz",
        tboot_cmdline=grub.render_tboot_cmdline(),
        kernel="vmlinuz",
        initrd="initrd.img",
    )
    configs = {
        fw: grub.render_grub_config(
            entries,
            image=name,
            firmware=fw,
            boot_dir="",
            boot_uuid=boot_uuid,
            timeout=grub_timeout,
            default=default,
        )
        for fw in ("bios", "uefi")
    }
    spec = installer.InstallerInput(
        name=name,
        boot_uuid=boot_uuid,
        grub_configs=configs,
        boot_files={
            "tboot.gz": Path("/boot/tboot.gz"),
            "vmlinuz": host_kernel(),
            "initrd.img": work / "initrd.img",
            "vl.pol": work / "vl.pol",
            "provision-vlp.sh": work / "provision-vlp.sh",
        },
        base=base,
        verity=verity,
        volumes=[("data", volume)],
        epoch=EPOCH,
    )
    return Inputs(spec, root_hash)
