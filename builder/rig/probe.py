"""A minimal probe initramfs: boot, report the TPM's PCRs and event log, power off.

Built from a root tree (the host's, or a base image's) with busybox and kernel modules,
it checks the rig itself: that the guest sees what the emulated late launch extended.
The image's real initramfs is the initramfs stage's business, not this one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from builder.banks import Bank
from builder.initramfs_archive import Archive, Compression
from builder.rig.console import print_pcrs_script, send_eventlog_script

DONE = "ACTVSM-PROBE-DONE"
PROBE_PCRS = (0, 17, 18, 19)
PROBE_BANKS = (Bank.SHA1, Bank.SHA256)


@dataclass(frozen=True)
class ProbeOptions:
    kver: str
    modules: tuple[str, ...] = ()
    send_eventlog: bool = True
    # Reboot once before powering off, counting boots in the first byte of /dev/vda
    # (needs a disk and virtio_pci + virtio_blk in `modules`): exercises a VM reset.
    reboot_once: bool = False


def probe_init(options: ProbeOptions, module_paths: Iterable[str]) -> str:
    lines = [
        "#!/bin/busybox sh",
        "/bin/busybox --install -s /bin",
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        "mount -t devtmpfs devtmpfs /dev",
        "echo 1 > /proc/sys/kernel/printk",  # keep kernel messages out of the report
        *(f"insmod {path}" for path in module_paths),
        'echo "ACTVSM-MODULES $(cut -d" " -f1 /proc/modules | sort | tr "\\n" " ")"',
        print_pcrs_script(PROBE_PCRS, PROBE_BANKS).rstrip("\n"),
    ]
    if options.send_eventlog:
        lines.append(send_eventlog_script().rstrip("\n"))
    if options.reboot_once:
        lines += [
            "for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.5; done",
            '[ -b /dev/vda ] || { echo "ACTVSM-PROBE-ERROR no /dev/vda"; poweroff -f; }',
            'if [ "$(head -c 1 /dev/vda)" != "1" ]; then',
            "  printf 1 | dd of=/dev/vda conv=notrunc 2>/dev/null; sync",
            '  echo "ACTVSM-REBOOT"; reboot -f',
            "fi",
        ]
    lines += [f'echo "{DONE}"', "poweroff -f", ""]
    return "\n".join(lines)


def build_probe(
    root: Path, options: ProbeOptions, out: Path, compression: Compression = Compression.GZIP
) -> None:
    """Write the probe initramfs for the kernel `options.kver` of `root` to `out`."""
    archive = Archive()
    archive.add_basic_devices()
    for directory in ("proc", "sys", "dev", "tmp", "bin", "sbin", "usr/bin", "usr/sbin"):
        archive.add_dir(directory)
    archive.add_binary(root, "bin/busybox")
    modules = archive.add_modules(root, options.kver, options.modules) if options.modules else []
    archive.add_bytes("init", probe_init(options, modules).encode(), 0o755)
    archive.write(out, compression)
