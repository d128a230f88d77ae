"""The measured initramfs: the rendered init, busybox and the kernel modules it needs,
all taken from the base tree, packed reproducibly (`builder.initramfs_archive`)."""

from __future__ import annotations

from pathlib import Path

from builder.config import ImageDefinition
from builder.initramfs_archive import Archive, Compression
from builder.templating import render

# Modules the init loads, in this order (dependencies are added from modules.dep).
MODULES = ("virtio_pci", "virtio_blk", "squashfs", "overlay", "dm_verity", "dm_crypt", "loop")
BINARIES = ("bin/busybox",)
INITRAMFS_VERSION = 1


def build_initramfs(defn: ImageDefinition, root: Path, kernel_version: str) -> bytes:
    archive = Archive()
    archive.add_basic_devices()
    for d in ("proc", "sys", "dev", "run", "tmp", "sysroot", "etc"):
        archive.add_dir(d)
    for binary in BINARIES:
        archive.add_binary(root, binary)
    modules = archive.add_modules(root, kernel_version, MODULES)
    init = render(
        "init.j2",
        image=defn.name,
        modes=[m.name for m in defn.modes],
        modules=modules,
    )
    archive.add_bytes("init", init.encode(), 0o755)
    return archive.build(Compression.GZIP, mtime=defn.source_date_epoch)
