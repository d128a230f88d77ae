"""Stage predict: per-mode command lines, the launch policy, GRUB entries, the expected
PCRs and their event logs. Not cached: it is fast and depends on everything before."""

from __future__ import annotations

from typing import Any

from builder import predict
from builder.banks import Bank
from builder.cel import to_cel
from builder.context import BuildContext
from builder.platform import load_platform
from builder.tboot.grub import mode_entries, render_grub_config, render_provision_script
from builder.ui import canonical_json


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
