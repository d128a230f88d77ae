"""Stages boot files and initramfs: what GRUB loads and tboot measures."""

from __future__ import annotations

import hashlib
from pathlib import Path

from builder import initramfs, paths, predict
from builder.bootfiles import find_boot_files
from builder.context import BuildContext


def collect_boot_files(ctx: BuildContext) -> None:
    """The kernel and tboot from the tree, as the boot partition will hold them."""
    assert ctx.tree_root is not None
    files = find_boot_files(ctx.defn, ctx.tree_root)
    ctx.add_artifact(f"boot/{predict.KERNEL_NAME}", files.kernel)
    ctx.add_artifact(f"boot/{predict.TBOOT_NAME}", files.tboot)
    ctx.facts["kernel_version"] = files.kernel_version


def make_initramfs(ctx: BuildContext) -> None:
    assert ctx.tree_root is not None
    inputs = {
        "stage": "initramfs",
        "version": initramfs.INITRAMFS_VERSION,
        "tree": ctx.facts["tree_key"],
        "kernel_version": ctx.facts["kernel_version"],
        "init": _digest_of(paths.INITRAMFS),
        "definition": {
            "name": ctx.defn.name,
            "modes": [m.name for m in ctx.defn.modes],
            "volumes": [v.__dict__ for v in ctx.defn.volumes],
            "integrity": ctx.defn.integrity,
            "sealing": ctx.defn.sealing.__dict__,
            "epoch": ctx.defn.source_date_epoch,
        },
    }
    entry = ctx.cache.lookup("initramfs", inputs)
    if entry is None:
        scratch = ctx.cache.new_entry("initramfs")
        with ctx.reporter.stage("initramfs", "packing the initramfs"):
            data = initramfs.build_initramfs(ctx.defn, ctx.tree_root, ctx.facts["kernel_version"])
            (scratch / predict.INITRD_NAME).write_bytes(data)
        entry = ctx.cache.commit("initramfs", inputs, scratch)
        ctx.cached["initramfs"] = False
    else:
        ctx.reporter.info("initramfs", "reusing cached initramfs")
        ctx.cached["initramfs"] = True
    ctx.add_artifact(f"boot/{predict.INITRD_NAME}", entry / predict.INITRD_NAME)


def _digest_of(directory: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(directory).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()
