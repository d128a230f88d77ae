"""Stage seal: one LUKS2 image per volume, its key sealed to the allowed modes' PCRs."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder import tree
from builder.banks import Bank
from builder.config import Volume
from builder.context import BuildContext
from builder.digest import file_digests
from builder.errors import InputError
from builder.seal import (
    FsType,
    LocalTpm,
    OfflineTargets,
    PolicySpec,
    Sealer,
    VolumeSpec,
    build_policy,
    make_volume,
)
from builder.swtpm import Swtpm


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
            branches = build_policy(predicted, vol.modes, policy).branches
            meta[vol.name] = {
                "artifact": f"volumes/{vol.name}.luks",
                "modes": list(vol.modes),
                "pcrs": sorted(defn.sealing.pcrs),
                "bank": defn.sealing.bank.value,
                "policy": art.policy_hash.hex(),
                "policy_branches": {b.mode: b.digest.hex() for b in branches},
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
