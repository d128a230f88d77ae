"""Stages tree and base: the root tree (mkosi, tarball or prebuilt) and the read-only
base image with its verity tree, both cached by the digest of their inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from builder import fsimage, tree
from builder.banks import ALL_BANKS, Bank
from builder.context import BuildContext
from builder.digest import file_digests
from builder.run import require_tool, run

PIPELINE_VERSION = 1


def tool_version(cmd: list[str]) -> str:
    proc = run(cmd, check=False, timeout=60)
    text = (proc.stdout or b"").decode(errors="replace") + (proc.stderr or b"").decode(
        errors="replace"
    )
    return text.strip().splitlines()[0] if text.strip() else "unknown"


def make_tree(ctx: BuildContext) -> None:
    """The root tree: mkosi's (cached), a tarball's, or the prebuilt one as given."""
    base = ctx.defn.base
    if base.tree is not None:
        ctx.tree_root = base.tree
        ctx.facts["tree_key"] = {"prebuilt_tree": tree.tree_fingerprint(base.tree)}
        ctx.cached["tree"] = True
        return
    if base.tarball is not None:
        digest = file_digests(base.tarball, (Bank.SHA256,))[1][Bank.SHA256].hex()
        inputs: dict[str, Any] = {"tarball_sha256": digest}
    else:
        inputs = {"mkosi": tree.mkosi_version(), **tree.base_settings(base)}
    if base.extra_tree is not None:
        inputs["extra_tree"] = tree.tree_fingerprint(base.extra_tree)
    inputs |= {
        "stage": "tree",
        "normalize": tree.NORMALIZE_VERSION,
        "name": ctx.defn.name,
        "epoch": ctx.defn.source_date_epoch,
    }
    ctx.facts["tree_key"] = inputs
    entry = ctx.cache.lookup("tree", inputs)
    if entry is None:
        scratch = ctx.cache.new_entry("tree")
        with ctx.reporter.stage(
            "tree",
            "building the root tree"
            + (" with mkosi" if base.tarball is None else f" from {base.tarball.name}"),
        ):
            if base.tarball is not None:
                tree.unpack_tarball(base.tarball, scratch / "root")
            else:
                tree.build_with_mkosi(
                    ctx.defn,
                    scratch,
                    ctx.cache_dir_for("mkosi-packages"),
                    show_output=ctx.show_output,
                )
                for leftover in scratch.iterdir():
                    if leftover.name != "root":
                        _remove(leftover)
            if base.extra_tree is not None:
                tree.overlay_tree(base.extra_tree, scratch / "root")
            tree.normalize_tree(
                scratch / "root", name=ctx.defn.name, epoch=ctx.defn.source_date_epoch
            )
        entry = ctx.cache.commit("tree", inputs, scratch)
        ctx.cached["tree"] = False
    else:
        ctx.reporter.info("tree", "reusing cached root tree")
        ctx.cached["tree"] = True
    ctx.tree_root = entry / "root"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def make_base_image(ctx: BuildContext) -> None:
    """The read-only image of the tree and, for `verity`, its hash tree and root hash."""
    base = ctx.defn.base
    assert ctx.tree_root is not None
    tool = ["mksquashfs", "-version"] if base.format == "squashfs" else ["mkfs.erofs", "-V"]
    require_tool(tool[0], f"make the {base.format} base image")
    inputs = {
        "stage": "base",
        "pipeline": PIPELINE_VERSION,
        "tree": ctx.facts["tree_key"],
        "format": base.format,
        "compression": base.compression,
        "level": base.compression_level,
        "epoch": ctx.defn.source_date_epoch,
        "tool": tool_version(tool),
        "veritysetup": tool_version(["veritysetup", "--version"]),
        "integrity": ctx.defn.integrity,
    }
    image_name = f"base.{base.format}"
    entry = ctx.cache.lookup("base", inputs)
    if entry is None:
        scratch = ctx.cache.new_entry("base")
        image = scratch / image_name
        with ctx.reporter.stage("base", f"making {image_name} ({base.compression})"):
            if base.format == "squashfs":
                fsimage.make_squashfs(
                    ctx.tree_root,
                    image,
                    compression=base.compression,
                    level=base.compression_level,
                    epoch=ctx.defn.source_date_epoch,
                    progress=ctx.show_output,
                )
            else:
                fsimage.make_erofs(
                    ctx.tree_root,
                    image,
                    compression=base.compression,
                    epoch=ctx.defn.source_date_epoch,
                    fs_uuid=fsimage.derived_uuid(ctx.defn.name.encode(), "erofs"),
                )
        with ctx.reporter.stage("verity", "hashing the base image"):
            size, digests = file_digests(image, ALL_BANKS)
            facts: dict[str, Any] = {
                "digests": {b.value: d.hex() for b, d in digests.items()},
                "size": size,
            }
            if ctx.defn.integrity == "verity":
                info = fsimage.verity_format(
                    image, scratch / "base.verity", image_sha256=digests[Bank.SHA256]
                )
                facts["verity"] = info.to_json()
            (scratch / "facts.json").write_text(json.dumps(facts, sort_keys=True))
        entry = ctx.cache.commit("base", inputs, scratch)
        ctx.cached["base"] = False
    else:
        ctx.reporter.info("base", f"reusing cached {image_name}")
        ctx.cached["base"] = True
    facts = json.loads((entry / "facts.json").read_text())
    ctx.add_artifact(image_name, entry / image_name)
    ctx.facts["base_image"] = image_name
    ctx.facts["base_digests"] = facts
    ctx.known_digests[image_name] = {"size": facts["size"], "digests": facts["digests"]}
    if "verity" in facts:
        ctx.add_artifact("base.verity", entry / "base.verity")
        ctx.facts["verity"] = facts["verity"]
