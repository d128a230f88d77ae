"""Platform profiles: what the hardware and its SINIT ACM extend into PCR 17/18 at a late
launch, captured once per hardware model (from its TXT event log, or by hand).

A profile is YAML in images/platforms/ (format in docs/launch.md). Loading validates
every field and reports the file, line and field of anything wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from builder.banks import ALL_BANKS, Bank
from builder.errors import InputError, input_error
from builder.paths import PLATFORMS
from builder.tboot.yamlspec import LocDict, LocList, load_yaml

# TXT event types (Intel TXT MLE Developer's Guide; EVTYPE_BASE 0x400).
TXT_EVENT_TYPES: dict[str, int] = {
    "PCR_MAPPING": 0x401,
    "HASH_START": 0x402,
    "COMBINED_HASH": 0x403,
    "MLE_HASH": 0x404,
    "BIOSAC_REG_DATA": 0x40A,
    "CPU_SCRTM_STAT": 0x40B,
    "LCP_CONTROL_HASH": 0x40C,
    "ELEMENTS_HASH": 0x40D,
    "STM_HASH": 0x40E,
    "OSSINITDATA_CAP_HASH": 0x40F,
    "SINIT_PUBKEY_HASH": 0x410,
    "LCP_HASH": 0x411,
    "LCP_DETAILS_HASH": 0x412,
    "LCP_AUTHORITIES_HASH": 0x413,
    "NV_INFO_HASH": 0x414,
    "COLD_BOOT_BIOS_HASH": 0x415,
    "KM_HASH": 0x416,
    "BPM_HASH": 0x417,
    "KM_INFO_HASH": 0x418,
    "BPM_INFO_HASH": 0x419,
    "BOOT_POL_HASH": 0x41A,
    "CAP_VALUE": 0x4FF,
}
TXT_EVENT_NAMES = {v: k for k, v in TXT_EVENT_TYPES.items()}
TBOOT_EVENT_TYPE = 0x501


class PcrMapping(StrEnum):
    LEGACY = "legacy"  # PCR 17 <- SINIT + policy, PCR 18 <- MLE + module 0
    DA = "da"  # details/authorities: PCR 17 details, PCR 18 authorities


class Extpol(StrEnum):
    """tboot's `extpol=`: which banks its own measurements extend (TPM 2.0)."""

    SHA1 = "sha1"
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"
    EMBEDDED = "embedded"  # every bank, tboot hashes
    AGILE = "agile"  # every bank, the TPM hashes (same values)


class TpmFamily(StrEnum):
    TPM12 = "1.2"
    TPM20 = "2.0"


@dataclass(frozen=True)
class SinitEvent:
    """One extend by the ACM/hardware. `digests` None only for the MLE_HASH placeholder,
    whose value the model computes from tboot and its command line."""

    pcr: int
    name: str
    event_type: int
    digests: Mapping[Bank, bytes] | None
    data: bytes | None = None
    description: str = ""


@dataclass(frozen=True)
class Platform:
    name: str
    description: str
    tpm: TpmFamily
    mapping: PcrMapping
    extpol: Extpol
    banks: tuple[Bank, ...]
    hash_start: SinitEvent
    events: tuple[SinitEvent, ...]
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def mle_event(self) -> SinitEvent:
        return next(e for e in self.events if e.name == "MLE_HASH")


def profile_path(name_or_path: str) -> Path:
    """A profile by name (images/platforms/NAME.yaml) or by path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or "/" in name_or_path:
        return p
    return PLATFORMS / f"{name_or_path}.yaml"


def load_platform(name_or_path: str | Path) -> Platform:
    path = profile_path(str(name_or_path))
    if not path.is_file():
        known = sorted(p.stem for p in PLATFORMS.glob("*.yaml")) if PLATFORMS.is_dir() else []
        raise input_error(
            "no such platform profile",
            file=path,
            hint=f"known profiles: {', '.join(known) or 'none'}",
        )
    return platform_from_yaml(load_yaml(path), path)


class _Ctx:
    def __init__(self, path: Path) -> None:
        self.path = path

    def err(
        self, msg: str, obj: Any, key: str | int, fld: str, hint: str | None = None
    ) -> InputError:
        line: int | None = None
        if isinstance(obj, LocDict) and isinstance(key, str):
            line = obj.line_of(key)
        elif isinstance(obj, LocList) and isinstance(key, int):
            line = obj.line_of(key)
        else:
            line = getattr(obj, "line", None)
        return input_error(msg, file=self.path, line=line, field=fld, hint=hint)

    def keys(self, obj: Any, allowed: set[str], required: set[str], where: str) -> None:
        for k in obj:
            if k not in allowed:
                raise self.err(
                    f"unknown field {k!r}",
                    obj,
                    k,
                    where + k,
                    hint=f"allowed: {', '.join(sorted(allowed))}",
                )
        for k in sorted(required):
            if k not in obj:
                raise self.err(f"missing field {k!r}", obj, "", where + k)


def _enum(ctx: _Ctx, obj: Any, key: str, enum: Any, default: Any = None) -> Any:
    value = obj.get(key, default)
    try:
        return enum(str(value))
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise ctx.err(f"{key} must be one of {allowed}, not {value!r}", obj, key, key) from None


def _bytes_field(ctx: _Ctx, obj: Any, where: str) -> bytes | None:
    if "data" in obj and "data_hex" in obj:
        raise ctx.err("give data or data_hex, not both", obj, "data_hex", where + "data_hex")
    if "data" in obj:
        if not isinstance(obj["data"], str):
            raise ctx.err("data must be a string", obj, "data", where + "data")
        return str(obj["data"]).encode()
    if "data_hex" in obj:
        try:
            return bytes.fromhex(str(obj["data_hex"]))
        except ValueError:
            raise ctx.err("data_hex is not hex", obj, "data_hex", where + "data_hex") from None
    return None


def _digests(ctx: _Ctx, obj: Any, banks: Sequence[Bank], where: str) -> dict[Bank, bytes]:
    d = obj["digests"]
    if not isinstance(d, dict):
        raise ctx.err("digests must map bank -> hex", obj, "digests", where + "digests")
    out: dict[Bank, bytes] = {}
    for k, v in d.items():
        try:
            bank = Bank(str(k))
        except ValueError:
            raise ctx.err(f"unknown bank {k!r}", d, k, f"{where}digests.{k}") from None
        try:
            value = bytes.fromhex(str(v))
        except ValueError:
            raise ctx.err("not a hex digest", d, k, f"{where}digests.{k}") from None
        if len(value) != bank.size:
            raise ctx.err(
                f"a {bank} digest has {bank.size} bytes, not {len(value)}",
                d,
                k,
                f"{where}digests.{k}",
            )
        out[bank] = value
    missing = [b.value for b in banks if b not in out]
    if missing:
        raise ctx.err(
            f"digests missing for bank(s) {', '.join(missing)}",
            obj,
            "digests",
            where + "digests",
            hint="give a digest for every bank in 'banks'",
        )
    return out


def _event(ctx: _Ctx, obj: Any, banks: Sequence[Bank], where: str, hash_start: bool) -> SinitEvent:
    if not isinstance(obj, dict):
        raise ctx.err("must be a mapping", obj, 0, where.rstrip("."))
    allowed = {"pcr", "type", "data", "data_hex", "digests", "description"}
    ctx.keys(
        obj,
        allowed - ({"pcr", "type"} if hash_start else set()),
        set() if hash_start else {"pcr", "type"},
        where,
    )
    if hash_start:
        pcr, name = 17, "HASH_START"
    else:
        pcr = obj["pcr"]
        if pcr not in (17, 18) or isinstance(pcr, bool):
            raise ctx.err(
                f"pcr must be 17 or 18 (what SINIT extends), not {pcr!r}", obj, "pcr", where + "pcr"
            )
        name = str(obj["type"])
        if name not in TXT_EVENT_TYPES or name == "HASH_START":
            raise ctx.err(
                f"unknown SINIT event type {name!r}",
                obj,
                "type",
                where + "type",
                hint="one of " + ", ".join(n for n in TXT_EVENT_TYPES if n != "HASH_START"),
            )
    data = _bytes_field(ctx, obj, where)
    has_digests = "digests" in obj
    description = str(obj.get("description", ""))
    if name == "MLE_HASH":
        if data is not None or has_digests:
            raise ctx.err(
                "MLE_HASH is computed from tboot and its command line; give no data or digests",
                obj,
                "type",
                where + "type",
            )
        return SinitEvent(pcr, name, TXT_EVENT_TYPES[name], None, None, description)
    if (data is None) == (not has_digests):
        raise ctx.err(
            "give either data/data_hex (digest = hash of it) or digests",
            obj,
            "type" if not hash_start else "",
            where.rstrip("."),
        )
    digests = (
        _digests(ctx, obj, banks, where) if has_digests else {b: b.hash(data or b"") for b in banks}
    )
    return SinitEvent(pcr, name, TXT_EVENT_TYPES[name], digests, data, description)


def platform_from_yaml(doc: Any, path: Path) -> Platform:
    ctx = _Ctx(path)
    if not isinstance(doc, dict):
        raise input_error("a platform profile must be a mapping", file=path, line=1)
    ctx.keys(
        doc,
        {
            "name",
            "description",
            "tpm",
            "mapping",
            "extpol",
            "banks",
            "hash_start",
            "events",
            "source",
        },
        {"name", "tpm", "mapping", "banks", "hash_start", "events"},
        "",
    )
    name = doc["name"]
    if not isinstance(name, str) or not name:
        raise ctx.err("name must be a non-empty string", doc, "name", "name")
    tpm = _enum(ctx, doc, "tpm", TpmFamily)
    mapping = _enum(ctx, doc, "mapping", PcrMapping)
    extpol = _enum(ctx, doc, "extpol", Extpol, "sha1" if tpm is TpmFamily.TPM12 else "sha256")
    banks_v = doc["banks"]
    if not isinstance(banks_v, list) or not banks_v:
        raise ctx.err("banks must be a non-empty list", doc, "banks", "banks")
    banks: list[Bank] = []
    for i, b in enumerate(banks_v):
        try:
            bank = Bank(str(b))
        except ValueError:
            raise ctx.err(
                f"unknown bank {b!r}",
                banks_v,
                i,
                f"banks[{i}]",
                hint="sha1, sha256, sha384 or sha512",
            ) from None
        if bank in banks:
            raise ctx.err(f"bank {b} listed twice", banks_v, i, f"banks[{i}]")
        banks.append(bank)
    if tpm is TpmFamily.TPM12:
        if banks != [Bank.SHA1]:
            raise ctx.err("a TPM 1.2 has the sha1 bank only", doc, "banks", "banks")
        if extpol is not Extpol.SHA1:
            raise ctx.err(
                "tboot on a TPM 1.2 extends SHA-1 only: extpol must be sha1",
                doc,
                "extpol",
                "extpol",
            )
    if extpol.value in {b.value for b in ALL_BANKS} and Bank(extpol.value) not in banks:
        raise ctx.err(
            f"extpol {extpol} needs the {extpol} bank, which 'banks' lacks", doc, "extpol", "extpol"
        )
    hs = doc["hash_start"]
    hash_start = _event(ctx, hs, banks, "hash_start.", hash_start=True)
    events_v = doc["events"]
    if not isinstance(events_v, list):
        raise ctx.err("events must be a list", doc, "events", "events")
    events = tuple(
        _event(ctx, e, banks, f"events[{i}].", hash_start=False) for i, e in enumerate(events_v)
    )
    mle = [i for i, e in enumerate(events) if e.name == "MLE_HASH"]
    if len(mle) != 1:
        raise ctx.err(
            f"events must hold exactly one MLE_HASH (has {len(mle)})", doc, "events", "events"
        )
    want = 17 if mapping is PcrMapping.DA else 18
    if events[mle[0]].pcr != want:
        raise ctx.err(
            f"with the {mapping} mapping SINIT extends MLE_HASH into PCR {want}",
            events_v,
            mle[0],
            f"events[{mle[0]}].pcr",
        )
    return Platform(
        name=name,
        description=str(doc.get("description", "")),
        tpm=tpm,
        mapping=mapping,
        extpol=extpol,
        banks=tuple(banks),
        hash_start=hash_start,
        events=events,
        source=str(doc.get("source", "")),
    )


def platform_to_yaml_obj(p: Platform) -> dict[str, Any]:
    """The profile as a YAML-ready mapping (what `actvsm platform capture` writes)."""

    def ev(e: SinitEvent, with_pcr: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if with_pcr:
            out["pcr"] = e.pcr
            out["type"] = e.name
        if e.digests is not None:
            out["digests"] = {b.value: e.digests[b].hex() for b in p.banks if b in e.digests}
        if e.description:
            out["description"] = e.description
        return out

    obj: dict[str, Any] = {
        "name": p.name,
        "description": p.description,
        "tpm": p.tpm.value,
        "mapping": p.mapping.value,
        "extpol": p.extpol.value,
        "banks": [b.value for b in p.banks],
        "hash_start": ev(p.hash_start, with_pcr=False),
        "events": [ev(e) for e in p.events],
    }
    if p.source:
        obj["source"] = p.source
    return obj
