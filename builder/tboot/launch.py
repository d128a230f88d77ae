"""The late-launch model: every extend SINIT and tboot make into PCR 17/18/19. Pure.

Order (tboot 1.10 policy.c verify_all_modules, integrity.c extend_pcrs):
  1. HASH_START: PCR 17 = Ext(0, digest), from the platform profile.
  2. The platform's SINIT events in order, MLE_HASH computed from tboot + its cmdline.
  3. tboot: PCR 17 <- H(control_le32 || H(policy)) (inner hash zeros when control bit 0
     is clear); DA also PCR 18 <- the same; module 0 -> PCR 18 (legacy) / 17 (DA); then
     each module i into its policy entry's PCR (unless none).
tboot hashes with its `extpol` bank only (sha1/sha256/...), or every bank (embedded,
agile); the policy's inner hash always uses the extpol's base bank (SHA-256 for
embedded/agile). A policy hash_alg of 0 (tboot < 1.9) is rewritten to 4 before hashing.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from builder.banks import ALL_BANKS, Bank
from builder.errors import BuildError
from builder.pcr import Event, replay
from builder.platform import (
    Extpol,
    PcrMapping,
    Platform,
    SinitEvent,
    TpmFamily,
)
from builder.tboot import vlp
from builder.tboot.mlehash import MleImage
from builder.tboot.modules import (
    MAX_VL_HASHES,
    BootModule,
    MeasuredModule,
    check_cmdline,
    number_modules,
)

LOCALITY_HASH_START = 4
LOCALITY_SINIT = 3
LOCALITY_TBOOT = 2


def tboot_banks(platform: Platform) -> tuple[Bank, tuple[Bank, ...]]:
    """(the bank tboot hashes its policy with, the banks its extends carry)."""
    if platform.tpm is TpmFamily.TPM12:
        return Bank.SHA1, (Bank.SHA1,)
    if platform.extpol in (Extpol.EMBEDDED, Extpol.AGILE):
        return Bank.SHA256, tuple(b for b in platform.banks if b in ALL_BANKS)
    bank = Bank(platform.extpol.value)
    return bank, (bank,)


def policy_event_digest(policy: bytes, control: int, cur: Bank, bank: Bank) -> bytes:
    inner = cur.hash(policy) if control & vlp.CTRL_EXTEND_PCR17 else cur.zero
    return bank.hash(struct.pack("<I", control) + inner)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sinit_event(e: SinitEvent, platform: Platform) -> Event:
    assert e.digests is not None
    details = {"platform": platform.name, "txt_event": e.name}
    if e.data is not None:
        details["data_sha256"] = _sha256(e.data)
    return Event(
        e.pcr,
        dict(e.digests),
        kind="txt." + e.name.lower(),
        description=e.description or f"SINIT {e.name} (platform {platform.name})",
        source=f"platform:{platform.name}",
        details=details,
        event_type=e.event_type,
    )


@dataclass(frozen=True)
class LaunchPlan:
    """Everything extended at the launch, with the locality each extend comes from."""

    hash_start: Event
    hash_start_data: bytes | None
    sinit: tuple[Event, ...]
    tboot: tuple[Event, ...]

    @property
    def events(self) -> list[Event]:
        return [self.hash_start, *self.sinit, *self.tboot]

    def extends(self) -> list[tuple[int, Event]]:
        """(locality, event) for every extend after HASH_START, in order."""
        return [(LOCALITY_SINIT, e) for e in self.sinit] + [(LOCALITY_TBOOT, e) for e in self.tboot]


def launch_plan(
    platform: Platform,
    *,
    mle: MleImage,
    tboot_name: str,
    tboot_cmdline: str,
    modules: Sequence[BootModule],
    policy: bytes,
) -> LaunchPlan:
    """The late launch of one boot entry (one mode) on `platform`."""
    pol = vlp.Policy.from_bytes(policy, "launch policy")
    check_cmdline(tboot_cmdline, f"tboot ({tboot_name})")
    check_extpol(platform, tboot_cmdline)
    measured = number_modules(modules)
    # SINIT
    hs = platform.hash_start
    assert hs.digests is not None
    hash_start = Event(
        17,
        dict(hs.digests),
        kind="txt.hash_start",
        description=hs.description or f"HASH_START (platform {platform.name})",
        source=f"platform:{platform.name}",
        details={"platform": platform.name}
        | ({"data_sha256": _sha256(hs.data)} if hs.data is not None else {}),
        event_type=hs.event_type,
    )
    sinit: list[Event] = []
    for e in platform.events:
        if e.name != "MLE_HASH":
            sinit.append(_sinit_event(e, platform))
            continue
        sinit.append(
            Event(
                e.pcr,
                {b: mle.hash(tboot_cmdline, b) for b in platform.banks},
                kind="txt.mle_hash",
                description=f"SINIT measures tboot ({tboot_name}) with its command line",
                source=tboot_name,
                details={
                    "tboot_cmdline": tboot_cmdline,
                    "mle_sha256": _sha256(mle.expanded[mle.mle_start : mle.mle_end]),
                },
                event_type=e.event_type,
            )
        )
    tboot = tboot_events(platform, pol, policy, measured)
    return LaunchPlan(hash_start, hs.data, tuple(sinit), tuple(tboot))


def check_extpol(platform: Platform, tboot_cmdline: str) -> None:
    """tboot's command line must select the extpol the profile predicts with."""
    if platform.tpm is TpmFamily.TPM12:
        return
    given = [w.split("=", 1)[1] for w in tboot_cmdline.split() if w.startswith("extpol=")]
    effective = given[-1] if given else Extpol.SHA256.value  # tboot's default
    if effective != platform.extpol.value:
        raise BuildError(
            f"tboot's command line selects extpol={effective}, but platform {platform.name} "
            f"predicts with extpol={platform.extpol.value}",
            hint=f"put extpol={platform.extpol.value} on tboot's command line",
        )


def tboot_events(
    platform: Platform, pol: vlp.Policy, policy: bytes, measured: Sequence[MeasuredModule]
) -> list[Event]:
    cur, banks = tboot_banks(platform)
    fixed = platform.extpol not in (Extpol.EMBEDDED, Extpol.AGILE)
    da = platform.mapping is PcrMapping.DA
    # tboot rewrites a legacy hash_alg 0 to 4 in memory before hashing the policy
    hashed = policy[:2] + b"\x04" + policy[3:] if policy[2] == 0 else policy
    hashed = hashed[: len(pol.to_bytes())]
    pdig = {b: policy_event_digest(hashed, pol.control, cur, b) for b in banks}
    pdetails = {
        "policy_sha256": _sha256(hashed),
        "policy_control": str(pol.control),
        "policy_type": pol.policy_type.name.lower(),
        "extpol": platform.extpol.value,
    }
    out = [
        Event(
            17,
            pdig,
            "tboot.policy",
            "tboot's launch policy (control || policy hash)",
            "launch policy",
            pdetails,
        )
    ]
    if da:
        out.append(
            Event(
                18,
                pdig,
                "tboot.policy",
                "tboot's launch policy, copied to PCR 18 (DA)",
                "launch policy",
                pdetails,
            )
        )

    cache: dict[tuple[int, Bank], bytes] = {}

    def digest(m: MeasuredModule, bank: Bank) -> bytes:
        if (m.num, bank) not in cache:
            cache[(m.num, bank)] = m.digest(bank)
        return cache[(m.num, bank)]

    def module_event(m: MeasuredModule, pcr: int, why: str, check: str) -> Event:
        mod = m.module
        return Event(
            pcr,
            {b: digest(m, b) for b in banks},
            kind="tboot.module",
            description=f"module {m.num} ({mod.kind}) {mod.name}: {why}",
            source=mod.name,
            details={
                "module": str(m.num),
                "module_kind": mod.kind.value,
                "cmdline": mod.cmdline,
                "image_sha256": _sha256(m.image),
                "file_sha256": _sha256(mod.data),
                "compression": m.compression.value,
                "policy_check": check,
            },
        )

    entries = []
    for m in measured:
        entry = pol.find_entry(m.num)
        if entry is None:
            raise BuildError(
                f"module {m.num} ({m.module.name}) has no entry in the launch policy",
                hint="tboot halts on a module its policy does not list; add an entry",
            )
        entries.append(entry)
    checks = [_policy_check(pol, e, m, cur, fixed) for m, e in zip(measured, entries, strict=True)]
    m0 = measured[0]
    out.append(module_event(m0, 17 if da else 18, "always measured (module 0)", checks[0]))
    for m, e, check in zip(measured, entries, checks, strict=True):
        if e.pcr != vlp.PCR_NONE:
            out.append(module_event(m, e.pcr, f"policy entry extends PCR {e.pcr}", check))
    if len(out) > MAX_VL_HASHES:
        raise BuildError(
            f"tboot would make {len(out)} measurements; it keeps at most {MAX_VL_HASHES} and "
            "silently drops the rest",
            hint="extend fewer modules (pcr: none) or use fewer modules",
        )
    return out


def _policy_check(
    pol: vlp.Policy, entry: vlp.Entry, m: MeasuredModule, cur: Bank, fixed: bool
) -> str:
    """How tboot's verification of this module goes; a halting failure is a BuildError."""
    if not fixed:
        return "not checked (extpol embedded/agile)"
    if entry.hash_type is vlp.HashType.ANY:
        return "any"
    digest = m.digest(cur)
    ok = pol.bank is cur and digest in entry.hashes
    if ok:
        return "match"
    if pol.policy_type is vlp.PolicyType.HALT:
        why = (
            f"the policy's {pol.bank} hashes cannot match tboot's {cur} measurement"
            if pol.bank is not cur
            else f"its measurement {digest.hex()} is not in the policy"
        )
        raise BuildError(
            f"module {m.num} ({m.module.name}): tboot would halt: {why}",
            hint="rebuild the policy from the same modules and command lines",
        )
    return "mismatch (policy type continues)"


def predict(platform: Platform, plan: LaunchPlan) -> dict[Bank, dict[int, bytes]]:
    """PCR 17/18/19 after the launch, per bank of the platform."""
    values = replay(plan.events, platform.banks, late_launch=True)
    return {b: {p: values[b].get(p, b.zero) for p in (17, 18, 19)} for b in platform.banks}


def rig_launch(plan: LaunchPlan) -> tuple[bytes, list[tuple[int, Event]]]:
    """What the QEMU/swtpm rig performs: Hash_Start/Data/End at locality 4 with the
    returned data, then each (locality, event) extend in order (3: SINIT, 2: tboot)."""
    if plan.hash_start_data is None:
        raise BuildError(
            "this platform profile gives HASH_START as a digest only; the rig needs its data",
            hint="use a profile with hash_start.data (e.g. qemu-swtpm)",
        )
    return plan.hash_start_data, plan.extends()
