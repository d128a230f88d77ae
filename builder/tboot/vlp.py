"""tboot's Verified Launch Policy (VLP): the bytes `tb_polgen` writes and tboot reads. Pure.

Layout (tboot include/tb_policy.h, packed little-endian): a 12-byte header (version 2,
policy type, hash alg, u32 policy control, u32 reserved, u8 entry count), then entries
of 8 bytes (module number, PCR, hash type, u32 NV index, u8 hash count) each followed
by its hashes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from builder.banks import Bank
from builder.errors import BuildError, InputError
from builder.tboot.modules import (
    BootModule,
    check_cmdline,
    loaded_image,
    module_digest,
    number_modules,
)

VERSION = 2
MOD_ANY = 129
MOD_NV = 130
MOD_NV_RAW = 131
MAX_MOD_NUM = 127
PCR_NONE = 255
MAX_PCR = 23
CTRL_EXTEND_PCR17 = 0x1
# tboot's buffer for the policy (MAX_TB_POLICY_SIZE: 8 entries of 4 64-byte hashes)
MAX_POLICY_SIZE = 12 + 8 * (8 + 4 * 64)
HEADER = struct.Struct("<BBBIIB")
ENTRY = struct.Struct("<BBBIB")


class PolicyType(IntEnum):
    NONFATAL = 0  # tb_polgen "nonfatal": continue on non-fatal errors
    CONTINUE = 1  # "continue": continue on verification failures, halt otherwise
    HALT = 2  # "halt": halt on any error


class HashType(IntEnum):
    ANY = 0
    IMAGE = 1


# TB_HALG_* values (include/hash.h); 0 is the SHA-1 value of tboot < 1.9 policies.
HALG_SHA1_LEGACY = 0
HALG: dict[Bank, int] = {Bank.SHA1: 4, Bank.SHA256: 0x0B, Bank.SHA384: 0x0C, Bank.SHA512: 0x0D}
BANK_OF_HALG: dict[int, Bank] = {v: k for k, v in HALG.items()} | {HALG_SHA1_LEGACY: Bank.SHA1}
TYPE_NAMES = {
    "nonfatal": PolicyType.NONFATAL,
    "continue": PolicyType.CONTINUE,
    "halt": PolicyType.HALT,
}


@dataclass(frozen=True)
class Entry:
    mod_num: int  # 0..127, MOD_ANY, or an NV entry
    pcr: int  # 0..23 or PCR_NONE
    hash_type: HashType
    hashes: tuple[bytes, ...] = ()
    nv_index: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "num": "any" if self.mod_num == MOD_ANY else _mod_name(self.mod_num),
            "pcr": "none" if self.pcr == PCR_NONE else self.pcr,
            "hash": "any" if self.hash_type is HashType.ANY else "image",
            "nv_index": self.nv_index,
            "hashes": [h.hex() for h in self.hashes],
        }


def _mod_name(num: int) -> int | str:
    return {MOD_NV: "nv", MOD_NV_RAW: "nv_raw"}.get(num, num)


@dataclass(frozen=True)
class Policy:
    policy_type: PolicyType
    hash_alg: int  # TB_HALG_*
    control: int = CTRL_EXTEND_PCR17
    entries: tuple[Entry, ...] = field(default_factory=tuple)

    @property
    def bank(self) -> Bank:
        return BANK_OF_HALG[self.hash_alg]

    def to_bytes(self) -> bytes:
        out = bytearray(
            HEADER.pack(
                VERSION, self.policy_type, self.hash_alg, self.control, 0, len(self.entries)
            )
        )
        size = self.bank.size
        for e in self.entries:
            out += ENTRY.pack(e.mod_num, e.pcr, e.hash_type, e.nv_index, len(e.hashes))
            for h in e.hashes:
                if len(h) != size:
                    raise ValueError(f"hash of {len(h)} bytes in a {self.bank} policy")
                out += h
        if len(out) > MAX_POLICY_SIZE:
            raise BuildError(
                f"the launch policy is {len(out)} bytes; tboot reads at most {MAX_POLICY_SIZE}",
                hint="fewer modes or modules (each distinct command line adds a hash)",
            )
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "policy") -> Policy:
        """Parse and validate as tboot's verify_policy does; InputError on anything wrong."""
        if len(data) < HEADER.size:
            raise InputError(f"{what}: {len(data)} bytes, shorter than the 12-byte header")
        version, ptype, halg, control, _reserved, count = HEADER.unpack_from(data)
        if version != VERSION:
            raise InputError(f"{what}: unsupported version {version} (tboot reads version 2)")
        if ptype > PolicyType.HALT:
            raise InputError(f"{what}: unknown policy type {ptype}")
        if halg not in BANK_OF_HALG:
            raise InputError(f"{what}: unsupported hash algorithm {halg:#x}")
        size = BANK_OF_HALG[halg].size
        off = HEADER.size
        entries = []
        for i in range(count):
            if off + ENTRY.size > len(data):
                raise InputError(f"{what}: entry {i} is cut short")
            mod, pcr, htype, nv_index, n = ENTRY.unpack_from(data, off)
            off += ENTRY.size
            if mod > MAX_MOD_NUM and mod not in (MOD_ANY, MOD_NV, MOD_NV_RAW):
                raise InputError(f"{what}: entry {i}: invalid module number {mod}")
            if pcr > MAX_PCR and pcr != PCR_NONE:
                raise InputError(f"{what}: entry {i}: invalid PCR {pcr}")
            if htype > HashType.IMAGE:
                raise InputError(f"{what}: entry {i}: invalid hash type {htype}")
            if off + n * size > len(data):
                raise InputError(f"{what}: entry {i}: hashes cut short")
            hashes = tuple(data[off + j * size : off + (j + 1) * size] for j in range(n))
            off += n * size
            entries.append(Entry(mod, pcr, HashType(htype), hashes, nv_index))
        return cls(PolicyType(ptype), halg, control, tuple(entries))

    def find_entry(self, mod_num: int) -> Entry | None:
        """tboot's lookup: the first entry for this module number OR the `any` entry."""
        for e in self.entries:
            if e.mod_num == mod_num or e.mod_num == MOD_ANY:
                return e
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "type": self.policy_type.name.lower(),
            "alg": self.bank.value,
            "hash_alg": self.hash_alg,
            "control": self.control,
            "extend_policy_into_pcr17": bool(self.control & CTRL_EXTEND_PCR17),
            "size": len(self.to_bytes()),
            "entries": [e.to_json() for e in self.entries],
        }

    def describe(self) -> str:
        lines = [
            f"type: {self.policy_type.name.lower()}",
            f"alg: {self.bank.value}" + (" (legacy value 0)" if self.hash_alg == 0 else ""),
            f"control: {self.control:#010x}"
            + (" (extend policy hash into PCR 17)" if self.control & 1 else ""),
            f"entries: {len(self.entries)}",
        ]
        for e in self.entries:
            j = e.to_json()
            lines.append(f"  - num: {j['num']}  pcr: {j['pcr']}  hash: {j['hash']}")
            if e.mod_num in (MOD_NV, MOD_NV_RAW):
                lines.append(f"    nv_index: {e.nv_index:#010x}")
            lines.extend(f"    {h}" for h in j["hashes"])
        return "\n".join(lines)


@dataclass(frozen=True)
class AddOp:
    """One `tb_polgen --add`: module number, PCR, hash type and (for image) cmdline + image."""

    mod_num: int
    pcr: int
    hash_type: HashType
    cmdline: str = ""
    image: bytes | None = None  # the loaded (decompressed) image bytes


def apply_adds(policy_type: PolicyType, bank: Bank, control: int, adds: Iterable[AddOp]) -> Policy:
    """The policy `tb_polgen --create` then these `--add`s produce (its exact semantics).

    A repeated module number appends a hash to that entry and overwrites its PCR and
    hash type; but the lookup is tboot's (a module number also matches an earlier
    `any` entry), so after an `any` entry each `--add` opens a new entry.
    """
    entries: list[Entry] = []
    for op in adds:
        idx = next((i for i, e in enumerate(entries) if e.mod_num in (op.mod_num, MOD_ANY)), None)
        if idx is None or entries[idx].mod_num != op.mod_num:
            entries.append(Entry(op.mod_num, op.pcr, op.hash_type))
            idx = len(entries) - 1
        e = entries[idx]
        hashes = e.hashes
        if op.hash_type is HashType.IMAGE:
            assert op.image is not None
            hashes = hashes + (module_digest(op.cmdline, op.image, bank),)
        entries[idx] = Entry(e.mod_num, op.pcr, op.hash_type, hashes)
    return Policy(policy_type, HALG[bank], control, tuple(entries))


@dataclass(frozen=True)
class PolicyModule:
    """A module as the build knows it: number (after tboot's renumbering), the command
    line GRUB passes, and the module FILE (bytes or path); compressed files are hashed
    decompressed, as GRUB loads them."""

    num: int
    cmdline: str
    image: bytes | Path


DEFAULT_PCRS: Mapping[int, int | None] = {0: None, 1: 19}


def policy_for_modules(
    modules: Sequence[PolicyModule],
    *,
    policy_type: PolicyType = PolicyType.HALT,
    bank: Bank = Bank.SHA256,
    pcrs: Mapping[int, int | None] = DEFAULT_PCRS,
    control: int = CTRL_EXTEND_PCR17,
) -> bytes:
    """The VLP for an image: one entry per module number with one hash per distinct
    (cmdline, image) over all boot modes, in first-seen order.

    `pcrs` maps each module number to the PCR tboot extends it into (None: not extended
    by its entry; module 0 is always extended into PCR 18/17 anyway). A module number
    with no mapping is a BuildError: tboot would halt on a module not in the policy.
    """
    by_num: dict[int, list[bytes]] = {}
    for m in modules:
        if m.num not in pcrs:
            raise BuildError(
                f"module {m.num} has no launch policy entry (no PCR mapping given)",
                hint="tboot halts on a module that its policy does not list",
            )
        check_cmdline(m.cmdline, f"module {m.num}")
        if isinstance(m.image, Path):
            try:
                data = m.image.read_bytes()
            except OSError as exc:
                raise InputError(f"module {m.num}: cannot read {m.image}: {exc.strerror}") from None
        else:
            data = m.image
        image, _ = loaded_image(data, f"module {m.num}")
        digest = module_digest(m.cmdline, image, bank)
        seen = by_num.setdefault(m.num, [])
        if digest not in seen:
            seen.append(digest)
    entries = []
    for num in sorted(by_num):
        pcr = pcrs[num]
        entries.append(
            Entry(num, PCR_NONE if pcr is None else pcr, HashType.IMAGE, tuple(by_num[num]))
        )
    return Policy(policy_type, HALG[bank], control, tuple(entries)).to_bytes()


def policy_for_modes(
    boot_entries: Iterable[Sequence[BootModule]],
    *,
    policy_type: PolicyType = PolicyType.HALT,
    bank: Bank = Bank.SHA256,
    pcrs: Mapping[int, int | None] = DEFAULT_PCRS,
    control: int = CTRL_EXTEND_PCR17,
) -> bytes:
    """The VLP covering every boot mode: each entry is one mode's GRUB module list
    (kernel, initrd, SINIT ACMs...), numbered as tboot numbers them."""
    mods = [
        PolicyModule(m.num, m.module.cmdline, m.module.data)
        for modules in boot_entries
        for m in number_modules(modules)
    ]
    return policy_for_modules(mods, policy_type=policy_type, bank=bank, pcrs=pcrs, control=control)


def default_policy(*, tpm12: bool, da: bool, sha1: bool = False) -> Policy:
    """tboot's built-in policy, used when no policy is provisioned in NV (policy.c).

    Module 0 is not re-extended; every other module goes to PCR 17 (DA) or 19; the
    geo-tagging NV index 0x40000010 to PCR 22. tboot < 1.9.12 used SHA-1 (`sha1=True`).
    """
    halg = HALG[Bank.SHA1] if tpm12 or sha1 else HALG[Bank.SHA256]
    return Policy(
        PolicyType.NONFATAL,
        halg,
        CTRL_EXTEND_PCR17,
        (
            Entry(0, PCR_NONE, HashType.ANY),
            Entry(MOD_ANY, 17 if da and not tpm12 else 19, HashType.ANY),
            Entry(MOD_NV_RAW, 22, HashType.ANY, (), 0x40000010),
        ),
    )
