"""Compare two manifests and say, per mode and PCR, which inputs changed and how. Pure.

A PCR's value changes only because one of its events changed, was added or was
removed; events carry `details` (command lines, file digests, profile names), so the
explanation is the difference of those details, in words: "mode normal, PCR 18
(sha256): kernel (module 0): cmdline: actvsm.roothash 3f1a.. -> 9c2e..".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SHORT = 12


def short(value: str) -> str:
    """Abbreviate long hex values for people; the JSON keeps them whole."""
    if len(value) > 2 * SHORT and all(c in "0123456789abcdef" for c in value.lower()):
        return value[:SHORT] + ".."
    return value


def cmdline_change(old: str, new: str) -> str:
    """Word-level difference of two command lines: changed, added and removed arguments."""

    def split(line: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for arg in line.split():
            key, _, value = arg.partition("=")
            out[key] = value if "=" in arg else "\0flag"
        return out

    a, b = split(old), split(new)
    parts = []
    for key in list(a) + [k for k in b if k not in a]:
        if key in a and key in b and a[key] != b[key]:
            parts.append(f"{key} {short(a[key])} -> {short(b[key])}")
        elif key in a and key not in b:
            parts.append(f"removed {key}" + ("" if a[key] == "\0flag" else f"={short(a[key])}"))
        elif key in b and key not in a:
            parts.append(f"added {key}" + ("" if b[key] == "\0flag" else f"={short(b[key])}"))
    return ", ".join(parts) if parts else f"{old!r} -> {new!r}"


def detail_changes(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if a is not None and b is not None and "cmdline" in key:
            changes.append(f"{key}: {cmdline_change(a, b)}")
        else:
            changes.append(
                f"{key}: {short(a) if a is not None else '(none)'} -> "
                f"{short(b) if b is not None else '(none)'}"
            )
    return changes


@dataclass
class PcrChange:
    mode: str
    bank: str
    pcr: int
    old: str | None
    new: str | None
    reasons: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)  # the event sources involved
    broken_volumes: list[str] = field(default_factory=list)

    def text(self) -> str:
        head = f"mode {self.mode}, PCR {self.pcr} ({self.bank}): "
        body = "; ".join(self.reasons) if self.reasons else "value changed"
        tail = (
            f" [breaks the policy of volume(s) {', '.join(self.broken_volumes)}]"
            if self.broken_volumes
            else ""
        )
        return head + body + tail

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "bank": self.bank,
            "pcr": self.pcr,
            "old": self.old,
            "new": self.new,
            "reasons": self.reasons,
            "inputs": self.inputs,
            "broken_volumes": self.broken_volumes,
        }


@dataclass
class ManifestDiff:
    pcrs: list[PcrChange] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  # artifacts, modes, volumes, platform

    @property
    def equal(self) -> bool:
        return not self.pcrs and not self.other

    def lines(self) -> list[str]:
        return [c.text() for c in self.pcrs] + self.other

    def to_json(self) -> dict[str, Any]:
        return {"equal": self.equal, "pcrs": [c.to_json() for c in self.pcrs], "other": self.other}


def _events_for(mode: Mapping[str, Any], pcr: int, bank: str) -> list[Mapping[str, Any]]:
    return [e for e in mode.get("events", []) if e["pcr"] == pcr and bank in e.get("digests", {})]


def explain_events(
    old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]], bank: str
) -> tuple[list[str], list[str]]:
    """Reasons and sources for the differences between two event lists of one PCR."""
    reasons: list[str] = []
    sources: list[str] = []
    for i in range(max(len(old), len(new))):
        a = old[i] if i < len(old) else None
        b = new[i] if i < len(new) else None
        if a is not None and b is not None and a["digests"][bank] == b["digests"][bank]:
            continue
        if a is None and b is not None:
            reasons.append(f"event added: {b['description']}")
            sources.append(b.get("source", ""))
        elif b is None and a is not None:
            reasons.append(f"event removed: {a['description']}")
            sources.append(a.get("source", ""))
        elif a is not None and b is not None:
            changes = detail_changes(a.get("details", {}), b.get("details", {}))
            what = (
                b["description"]
                if a["description"] == b["description"]
                else (f"{a['description']} -> {b['description']}")
            )
            reasons.append(
                f"{what}: "
                + (
                    "; ".join(changes)
                    if changes
                    else f"digest {short(a['digests'][bank])} -> {short(b['digests'][bank])}"
                )
            )
            sources.append(b.get("source", ""))
    return reasons, sorted({s for s in sources if s})


def _volumes_broken(manifest: Mapping[str, Any], mode: str, bank: str, pcr: int) -> list[str]:
    broken = []
    for name, vol in sorted(manifest.get("volumes", {}).items()):
        if mode in vol.get("modes", []) and vol.get("bank") == bank and pcr in vol.get("pcrs", []):
            broken.append(name)
    return broken


def diff_manifests(a: Mapping[str, Any], b: Mapping[str, Any]) -> ManifestDiff:
    result = ManifestDiff()
    modes_a, modes_b = a.get("modes", {}), b.get("modes", {})
    for mode in sorted(set(modes_a) | set(modes_b)):
        if mode not in modes_b:
            result.other.append(f"mode {mode} removed")
            continue
        if mode not in modes_a:
            result.other.append(f"mode {mode} added")
            continue
        ma, mb = modes_a[mode], modes_b[mode]
        pa, pb = ma.get("pcrs", {}), mb.get("pcrs", {})
        for bank in sorted(set(pa) | set(pb)):
            for pcr_s in sorted(set(pa.get(bank, {})) | set(pb.get(bank, {})), key=int):
                va, vb = pa.get(bank, {}).get(pcr_s), pb.get(bank, {}).get(pcr_s)
                if va == vb:
                    continue
                pcr = int(pcr_s)
                reasons, sources = explain_events(
                    _events_for(ma, pcr, bank), _events_for(mb, pcr, bank), bank
                )
                result.pcrs.append(
                    PcrChange(
                        mode,
                        bank,
                        pcr,
                        va,
                        vb,
                        reasons,
                        sources,
                        _volumes_broken(a, mode, bank, pcr),
                    )
                )
    _diff_section(result, "artifact", a.get("artifacts", {}), b.get("artifacts", {}))
    _diff_section(result, "volume", a.get("volumes", {}), b.get("volumes", {}))
    for key, label in (("platform", "platform profile"), ("verity", "verity"), ("image", "image")):
        changes = detail_changes(_flat(a.get(key, {})), _flat(b.get(key, {})))
        # The definition's file name is where it was read from, not an input.
        changes = [c for c in changes if not c.startswith("definition: ")]
        if changes:
            result.other.append(f"{label} changed: " + "; ".join(changes))
    return result


def _flat(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in obj.items():
        if isinstance(value, Mapping):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def _diff_section(
    result: ManifestDiff, label: str, a: Mapping[str, Any], b: Mapping[str, Any]
) -> None:
    for name in sorted(set(a) | set(b)):
        if name not in b:
            result.other.append(f"{label} {name} removed")
        elif name not in a:
            result.other.append(f"{label} {name} added")
        elif a[name] != b[name]:
            flat_a, flat_b = _flat(a[name]), _flat(b[name])
            if label == "artifact":  # one digest says it; four say it four times
                flat_a = {k: v for k, v in flat_a.items() if k in ("size", "digests.sha256")}
                flat_b = {k: v for k, v in flat_b.items() if k in ("size", "digests.sha256")}
            changes = detail_changes(flat_a, flat_b)
            result.other.append(f"{label} {name} changed: " + "; ".join(changes))
