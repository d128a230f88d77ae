"""The build pipeline: a flat list of verb-named stages over one BuildContext.

Each stage computes the inputs it depends on, looks them up in the stage cache, and
only on a miss does the work into a scratch directory that the cache then adopts.
Artifacts are copied from cache entries into the staging directory, which
`atomic.publish` swaps into place at the very end.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import fsimage, initramfs, installer, paths, predict, tree
from builder.atomic import make_staging_dir, publish
from builder.banks import ALL_BANKS, Bank
from builder.bootfiles import find_boot_files
from builder.cache import StageCache
from builder.cel import to_cel
from builder.config import ImageDefinition, Volume
from builder.digest import file_digests
from builder.errors import BuildError, InputError
from builder.manifest import build_manifest, write_manifest
from builder.platform import load_platform
from builder.run import require_tool, run
from builder.seal import (
    FsType,
    LocalTpm,
    OfflineTargets,
    PolicySpec,
    Sealer,
    VolumeSpec,
    make_volume,
)
from builder.swtpm import Swtpm
from builder.tboot.grub import mode_entries, render_grub_config, render_provision_script
from builder.ui import Reporter, canonical_json

PIPELINE_VERSION = 1


@dataclass
class BuildContext:
    defn: ImageDefinition
    staging: Path
    cache: StageCache
    reporter: Reporter
    show_output: bool
    artifacts: dict[str, Path] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)
    tree_root: Path | None = None
    seal_target: SealTarget | None = None

    def cache_dir_for(self, name: str) -> Path:
        """A persistent directory for tools' own caches (mkosi's package cache)."""
        if self.cache.root is not None:
            return self.cache.root / name
        return self.staging / ".tool-cache" / name

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> Path:
        dest = self.staging / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        dest.chmod(mode)
        self.artifacts[name] = dest
        return dest

    def add_artifact(self, name: str, source: Path) -> Path:
        dest = self.staging / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        self.artifacts[name] = dest
        return dest


@dataclass
class BuildResult:
    outdir: Path
    manifest: dict[str, Any]
    timings: dict[str, float]
    cached: dict[str, bool]


def tool_version(cmd: list[str]) -> str:
    proc = run(cmd, check=False, timeout=60)
    text = (proc.stdout or b"").decode(errors="replace") + (proc.stderr or b"").decode(
        errors="replace"
    )
    return text.strip().splitlines()[0] if text.strip() else "unknown"


# --- stage: tree ----------------------------------------------------------------------


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


# --- stage: base image + verity --------------------------------------------------------


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
    if "verity" in facts:
        ctx.add_artifact("base.verity", entry / "base.verity")
        ctx.facts["verity"] = facts["verity"]


# --- stage: boot files and initramfs ----------------------------------------------------


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


# --- stage: launch (policy, GRUB) and predict ---------------------------------------------


def make_launch(ctx: BuildContext) -> None:
    """Per-mode command lines, the launch policy, GRUB configs, and predicted PCRs."""
    with ctx.reporter.stage("predict", "launch policy, GRUB entries and expected PCRs"):
        defn = ctx.defn
        platform = load_platform(defn.platform)
        kernel = ctx.artifacts[f"boot/{predict.KERNEL_NAME}"].read_bytes()
        initrd = ctx.artifacts[f"boot/{predict.INITRD_NAME}"].read_bytes()
        tboot = ctx.artifacts[f"boot/{predict.TBOOT_NAME}"].read_bytes()
        root_hash = ctx.facts.get("verity", {}).get("root_hash", "")
        base_sha256 = ctx.facts["base_digests"]["digests"]["sha256"]
        modes = [
            predict.ModeInput(
                m.name,
                predict.kernel_cmdline(
                    defn.kernel.cmdline, m.cmdline, m.name, defn.integrity, root_hash, base_sha256
                ),
                m.keys,
            )
            for m in defn.modes
        ]
        tboot_cmd = predict.tboot_cmdline(defn.tboot.cmdline, platform)
        policy = predict.make_policy(kernel, initrd, modes, defn.tboot.policy_type, platform)
        ctx.add_bytes("launch/vl.pol", policy)
        ctx.add_bytes(
            "launch/provision-vlp.sh",
            render_provision_script(policy, image=defn.name, policy_file="vl.pol").encode(),
            mode=0o755,
        )
        entries = mode_entries(
            {m.name: m.kernel_cmdline for m in modes},
            image=defn.name,
            tboot=predict.TBOOT_NAME,
            tboot_cmdline=tboot_cmd,
            kernel=predict.KERNEL_NAME,
            initrd=predict.INITRD_NAME,
        )
        ctx.facts["boot_entries"] = entries
        for firmware in ("bios", "uefi"):
            cfg = render_grub_config(entries, image=defn.name, firmware=firmware, boot_dir="/boot")
            ctx.add_bytes(f"boot/grub/grub-{firmware}.cfg", cfg.encode())
        ctx.add_artifact("platform.yaml", defn.platform)
        sealed = list(defn.sealing.pcrs)
        modes_json: dict[str, Any] = {}
        values_by_mode: dict[str, dict[Bank, dict[int, bytes]]] = {}
        predicted = predict.predict_modes(
            platform,
            tboot=tboot,
            tboot_cmd=tboot_cmd,
            kernel=kernel,
            initrd=initrd,
            modes=modes,
            policy=policy,
        )
        cap = predict.phase_cap_event(defn.sealing.phase_pcr)
        for mode in modes:
            values = predict.pcr_values(predicted[mode.name], platform.banks, sealed)
            values_by_mode[mode.name] = values
            modes_json[mode.name] = predict.mode_json(
                mode, tboot_cmd, predicted[mode.name], values, cap
            )
            if defn.output.event_log:
                cel = to_cel([*predicted[mode.name], cap])  # the initramfs caps in every mode
                ctx.add_bytes(f"events/{mode.name}.cel.json", canonical_json(cel).encode())
        ctx.facts["modes"] = modes_json
        ctx.facts["values_by_mode"] = values_by_mode
        ctx.facts["launch"] = {
            "policy": "launch/vl.pol",
            "policy_type": defn.tboot.policy_type,
            "nv_index": "0x01c10131",
            "tboot_cmdline": tboot_cmd,
        }


# --- stage: sealed volumes ------------------------------------------------------------------


@dataclass(frozen=True)
class SealTarget:
    """Where volume keys are sealed: the rig's own swtpm (created with the image, for the
    qemu-swtpm platform), a TPM present now (`--tpm`), or target SRKs offline."""

    kind: str  # "rig" | "tpm" | "srk"
    tcti: str | None = None
    srk_files: tuple[Path, ...] = ()
    recovery_dir: Path | None = None

    def cache_inputs(self) -> dict[str, Any] | None:
        if self.kind == "tpm":
            return None  # the TPM's own state is outside what we can key on
        return {
            "kind": self.kind,
            "srk": [file_digests(p, (Bank.SHA256,))[1][Bank.SHA256].hex() for p in self.srk_files],
        }


RIG_TPM_DIR = "rig/tpm"


def seal_volumes(ctx: BuildContext) -> None:
    """One LUKS2 image per volume, its key sealed to the allowed modes' predicted PCRs."""
    defn = ctx.defn
    if not defn.volumes:
        return
    target = ctx.seal_target
    if target is None:
        raise InputError(
            f"image '{defn.name}' has volumes but no sealing target",
            hint="give --target-srk FILE (offline, the target TPM's storage key) or --tpm TCTI",
        )
    bank = defn.sealing.bank
    values = ctx.facts["values_by_mode"]
    volumes_json: dict[str, Any] = {}
    predicted_all = {
        mode: {pcr: vals[bank][pcr] for pcr in defn.sealing.pcrs} for mode, vals in values.items()
    }
    target_inputs = target.cache_inputs()
    inputs = (
        None
        if target_inputs is None
        else {
            "stage": "seal",
            "target": target_inputs,
            "volumes": [_volume_inputs(v) for v in defn.volumes],
            "predicted": {
                m: {str(p): v.hex() for p, v in vals.items()} for m, vals in predicted_all.items()
            },
            "pcrs": list(defn.sealing.pcrs),
            "bank": bank.value,
        }
    )
    wants_recovery = any(v.recovery_passphrase for v in defn.volumes)
    entry = None if inputs is None or wants_recovery else ctx.cache.lookup("seal", inputs)
    if entry is None:
        scratch = ctx.cache.new_entry("seal") if inputs is not None else ctx.staging / ".seal"
        scratch.mkdir(exist_ok=True)
        with ctx.reporter.stage("seal", f"{len(defn.volumes)} volume(s), sealed to {target.kind}"):
            _make_volumes(ctx, target, scratch, predicted_all)
        if inputs is not None and not wants_recovery:
            entry = ctx.cache.commit("seal", inputs, scratch)
            ctx.cached["seal"] = False
        else:
            entry = scratch
    else:
        ctx.reporter.info("seal", "reusing cached sealed volumes")
        ctx.cached["seal"] = True
    meta = json.loads((entry / "volumes.json").read_text())
    for vol in defn.volumes:
        ctx.add_artifact(f"volumes/{vol.name}.luks", entry / f"{vol.name}.luks")
        volumes_json[vol.name] = meta[vol.name]
    if (entry / "tpm").is_dir():
        for f in sorted((entry / "tpm").iterdir()):
            if not f.name.startswith("."):  # swtpm's .lock
                ctx.add_artifact(f"{RIG_TPM_DIR}/{f.name}", f)
    if entry.parent == ctx.staging:
        shutil.rmtree(entry)
    ctx.facts["volumes"] = volumes_json


def _volume_inputs(vol: Volume) -> dict[str, Any]:
    content = tree.tree_fingerprint(vol.content) if vol.content is not None else None
    return {
        "name": vol.name,
        "size": vol.size,
        "fs": vol.filesystem,
        "modes": list(vol.modes),
        "content": content,
        "recovery": vol.recovery_passphrase,
    }


def _make_volumes(
    ctx: BuildContext, target: SealTarget, where: Path, predicted_all: dict[str, dict[int, bytes]]
) -> None:
    defn = ctx.defn
    policy = PolicySpec(pcrs=defn.sealing.pcrs, bank=defn.sealing.bank)
    meta: dict[str, Any] = {}

    def make_all(sealer: Sealer) -> None:
        for vol in defn.volumes:
            recovery = None
            if vol.recovery_passphrase:
                if target.recovery_dir is None:
                    raise InputError(
                        f"volume '{vol.name}' asks for a recovery passphrase",
                        hint="give --recovery-dir DIR (outside the output) to receive it",
                    )
                recovery = target.recovery_dir / f"{defn.name}-{vol.name}.recovery"
            spec = VolumeSpec(
                vol.name,
                vol.size,
                vol.modes,
                FsType.EXT4 if vol.filesystem == "ext4" else FsType.NONE,
                vol.content,
                recovery,
            )
            predicted = {m: predicted_all[m] for m in vol.modes}
            art = make_volume(spec, predicted, sealer, where, policy=policy)
            branches, combined = predict.volume_policy(predicted, defn.sealing.bank)
            if combined != art.policy_hash:
                raise BuildError(f"volume {vol.name}: sealed policy differs from the predicted one")
            meta[vol.name] = {
                "artifact": f"volumes/{vol.name}.luks",
                "modes": list(vol.modes),
                "pcrs": sorted(defn.sealing.pcrs),
                "bank": defn.sealing.bank.value,
                "policy": combined.hex(),
                "policy_branches": {m: d.hex() for m, d in branches.items()},
                "filesystem": vol.filesystem,
                "mount": vol.mount,
                "sealed_to": [
                    {"kind": t.kind, "parent_alg": t.parent_alg, "parent_name": t.parent_name}
                    for t in art.tokens
                ],
            }

    if target.kind == "rig":
        state = where / "tpm"
        state.mkdir(exist_ok=True)
        with Swtpm(state) as tpm:
            make_all(LocalTpm(tpm.tcti))
    elif target.kind == "tpm":
        assert target.tcti is not None
        make_all(LocalTpm(target.tcti))
    else:
        make_all(OfflineTargets(list(target.srk_files)))
    (where / "volumes.json").write_text(json.dumps(meta, sort_keys=True))


# --- stage: installer disk image ----------------------------------------------------------


def make_installer(ctx: BuildContext) -> None:
    """The GPT disk image admins flash: GRUB (BIOS+UEFI), boot files, base, verity, volumes."""
    defn = ctx.defn
    if not defn.output.installer:
        return
    base = ctx.artifacts[ctx.facts["base_image"]]
    verity = ctx.artifacts.get("base.verity")
    volumes = [(v.name, ctx.artifacts[f"volumes/{v.name}.luks"]) for v in defn.volumes]
    boot_uuid = installer.derive_boot_uuid(
        defn.name.encode() + b"\0" + bytes.fromhex(ctx.facts["base_digests"]["digests"]["sha256"])
    )
    grub = {
        fw: render_grub_config(
            ctx.facts["boot_entries"],
            image=defn.name,
            firmware=fw,
            boot_dir="",
            boot_uuid=boot_uuid,
        )
        for fw in ("bios", "uefi")
    }
    boot_files = {
        predict.TBOOT_NAME: ctx.artifacts[f"boot/{predict.TBOOT_NAME}"],
        predict.KERNEL_NAME: ctx.artifacts[f"boot/{predict.KERNEL_NAME}"],
        predict.INITRD_NAME: ctx.artifacts[f"boot/{predict.INITRD_NAME}"],
        "vl.pol": ctx.artifacts["launch/vl.pol"],
        "provision-vlp.sh": ctx.artifacts["launch/provision-vlp.sh"],
    }
    files = {
        "base": base,
        **({"verity": verity} if verity else {}),
        **boot_files,
        **{f"vol-{n}": p for n, p in volumes},
    }
    inputs = {
        "stage": "installer",
        "name": defn.name,
        "boot_uuid": boot_uuid,
        "grub": grub,
        "files": {
            k: file_digests(p, (Bank.SHA256,))[1][Bank.SHA256].hex() for k, p in files.items()
        },
        "epoch": defn.source_date_epoch,
        "compress": defn.output.compress_installer,
    }
    names = ["installer.img", "installer.img.sha256"]
    if defn.output.compress_installer:
        names += ["installer.img.zst", "installer.img.zst.sha256"]
    entry = ctx.cache.lookup("installer", inputs)
    if entry is None:
        scratch = ctx.cache.new_entry("installer")
        with ctx.reporter.stage("installer", "assembling the GPT disk image"):
            spec = installer.InstallerInput(
                name=defn.name,
                boot_uuid=boot_uuid,
                grub_configs=grub,
                boot_files=boot_files,
                base=base,
                verity=verity,
                volumes=volumes,
                epoch=defn.source_date_epoch,
            )
            installer.assemble(
                spec, scratch / "installer.img", compress=defn.output.compress_installer
            )
        entry = ctx.cache.commit("installer", inputs, scratch)
        ctx.cached["installer"] = False
    else:
        ctx.reporter.info("installer", "reusing cached disk image")
        ctx.cached["installer"] = True
    for name in names:
        ctx.add_artifact(name, entry / name)
    ctx.facts["installer"] = {"boot_uuid": boot_uuid}


Stage = Callable[[BuildContext], None]

# The pipeline, in order.
STAGES: list[Stage] = [
    make_tree,
    make_base_image,
    collect_boot_files,
    make_initramfs,
    make_launch,
    seal_volumes,
    make_installer,
]


def build(
    defn: ImageDefinition,
    outdir: Path,
    cache: StageCache,
    reporter: Reporter,
    *,
    show_output: bool | None = None,
    stages: list[Stage] | None = None,
    seal_target: SealTarget | None = None,
) -> BuildResult:
    """Run every stage into a staging directory and publish it as OUTDIR/<name>."""
    if show_output is None:
        show_output = sys.stderr.isatty() and not reporter.quiet
    target = outdir.resolve() / defn.name
    cache.remove_stale_scratch()
    staging = make_staging_dir(target)
    ctx = BuildContext(defn, staging, cache, reporter, show_output, seal_target=seal_target)
    try:
        todo = stages if stages is not None else STAGES
        for number, stage in enumerate(todo, start=1):
            reporter.step = (number, len(todo) + 1)  # the manifest is the last step
            stage(ctx)
        reporter.step = (len(todo) + 1, len(todo) + 1)
        with reporter.stage("manifest", "writing manifest.json"):
            manifest = build_manifest(ctx.defn, ctx.artifacts, ctx.facts, ctx.staging)
            write_manifest(staging / "manifest.json", manifest)
        publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not target.is_dir():
        raise BuildError(f"output {target} missing after publish")
    return BuildResult(target, manifest, dict(reporter.timings), dict(ctx.cached))
