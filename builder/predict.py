"""From the boot files and the definition to each mode's command lines, launch policy,
GRUB entries and predicted PCR values. Pure: bytes in, values out.

The same function serves `build` (to write the manifest) and `verify` (to re-derive
it from the artifacts on disk), so the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from builder.banks import ALL_BANKS, Bank
from builder.pcr import Event, initial_value, replay
from builder.platform import Platform, TpmFamily
from builder.tboot import vlp
from builder.tboot.launch import check_extpol, launch_plan
from builder.tboot.mlehash import load_mle
from builder.tboot.modules import BootModule, ModuleKind, check_cmdline

KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd.img"
TBOOT_NAME = "tboot.gz"
PHASE_CAP_DATA = b"actvsm: volumes unsealed, phase capped"


@dataclass(frozen=True)
class ModeInput:
    name: str
    kernel_cmdline: str  # complete, as GRUB passes it
    keys: bool


def tboot_cmdline(base: str, platform: Platform) -> str:
    """tboot's command line: the definition's, plus the extpol the profile predicts with."""
    words = base.split()
    if platform.tpm is TpmFamily.TPM20 and not any(w.startswith("extpol=") for w in words):
        words.append(f"extpol={platform.extpol.value}")
    line = " ".join(words)
    check_cmdline(line, "tboot")
    check_extpol(platform, line)
    return line


def kernel_cmdline(
    common: str, mode_extra: str, mode: str, integrity: str, root_hash: str, base_sha256: str
) -> str:
    """Common arguments, the mode's own, then what actvsm sets: the base's identity and mode."""
    words = common.split() + mode_extra.split()
    if integrity == "verity":
        words.append(f"actvsm.roothash={root_hash}")
    else:
        words.append(f"actvsm.digest={base_sha256}")
    words.append(f"actvsm.mode={mode}")
    line = " ".join(words)
    check_cmdline(line, f"mode {mode}: kernel")
    return line


def boot_modules(kernel: bytes, initrd: bytes, cmdline: str) -> list[BootModule]:
    return [
        BootModule(KERNEL_NAME, ModuleKind.KERNEL, cmdline, kernel),
        BootModule(INITRD_NAME, ModuleKind.INITRD, "", initrd),
    ]


def make_policy(
    kernel: bytes, initrd: bytes, modes: Sequence[ModeInput], policy_type: str, platform: Platform
) -> bytes:
    """One launch policy for every mode: module 0's entry lists each mode's hash."""
    bank = (
        Bank.SHA1
        if platform.tpm is TpmFamily.TPM12
        else Bank(
            platform.extpol.value
            if platform.extpol.value in {b.value for b in ALL_BANKS}
            else "sha256"
        )
    )
    return vlp.policy_for_modes(
        [boot_modules(kernel, initrd, m.kernel_cmdline) for m in modes],
        policy_type=vlp.TYPE_NAMES[policy_type],
        bank=bank,
    )


def phase_cap_event(pcr: int) -> Event:
    return Event.measuring(
        pcr,
        PHASE_CAP_DATA,
        "actvsm.phase-cap",
        "initramfs caps the phase PCR after unsealing",
        source="initramfs",
        details={"data": PHASE_CAP_DATA.decode()},
    )


def predict_modes(
    platform: Platform,
    *,
    tboot: bytes,
    tboot_cmd: str,
    kernel: bytes,
    initrd: bytes,
    modes: Sequence[ModeInput],
    policy: bytes,
) -> dict[str, list[Event]]:
    """Every event extended in each mode up to the moment volumes are unsealed.

    The launch policy's events say what the policy covers (every mode's kernel command
    line, the kernel and initrd digests): one policy serves all modes, so a change in
    one mode's command line changes PCR 17 in every mode, and `diff` can say why.
    """
    mle = load_mle(tboot, TBOOT_NAME)
    covers = {f"kernel_cmdline.{m.name}": m.kernel_cmdline for m in modes} | {
        "kernel_sha256": hashlib.sha256(kernel).hexdigest(),
        "initrd_sha256": hashlib.sha256(initrd).hexdigest(),
    }
    out: dict[str, list[Event]] = {}
    for mode in modes:
        plan = launch_plan(
            platform,
            mle=mle,
            tboot_name=TBOOT_NAME,
            tboot_cmdline=tboot_cmd,
            modules=boot_modules(kernel, initrd, mode.kernel_cmdline),
            policy=policy,
        )
        out[mode.name] = [
            replace(e, details={**e.details, **covers}) if e.kind == "tboot.policy" else e
            for e in plan.events
        ]
    return out


def pcr_values(
    events: Sequence[Event], banks: Sequence[Bank], pcrs: Sequence[int]
) -> dict[Bank, dict[int, bytes]]:
    """Values of `pcrs` (and of every PCR the events touch) per bank after a late launch."""
    values = replay(events, banks, late_launch=True)
    for bank in banks:
        for pcr in pcrs:
            values[bank].setdefault(pcr, initial_value(pcr, bank, late_launch=True))
    return values


def pcrs_json(values: Mapping[Bank, Mapping[int, bytes]]) -> dict[str, dict[str, str]]:
    return {
        b.value: {str(p): v.hex() for p, v in sorted(vals.items())} for b, vals in values.items()
    }


def mode_json(
    mode: ModeInput,
    tboot_cmd: str,
    events: Sequence[Event],
    values: Mapping[Bank, Mapping[int, bytes]],
    cap: Event,
) -> dict[str, Any]:
    after = replay([cap], list(values), start=values)
    return {
        "kernel_cmdline": mode.kernel_cmdline,
        "tboot_cmdline": tboot_cmd,
        "keys": mode.keys,
        "events": [e.to_json() for e in events],
        "pcrs": pcrs_json(values),
        "phase_cap": {
            "event": cap.to_json(),
            "pcrs_after": pcrs_json({b: {cap.pcr: after[b][cap.pcr]} for b in values}),
        },
    }
