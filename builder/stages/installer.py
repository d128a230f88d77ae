"""Stage installer: the GPT disk image admins flash, cached by the digests it holds."""

from __future__ import annotations

from builder import installer, predict
from builder.context import BuildContext
from builder.tboot.grub import render_grub_config


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
        "files": {k: ctx.sha256_of(p) for k, p in files.items()},
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
