"""The PCR engine: events, extends and predicted values per bank. Pure; no I/O.

An `Event` is one extend the platform will perform: which PCR, the digest in each
bank it extends (a bank missing from `digests` is not extended by that event, as with
tboot's `extpol=sha256`), and enough provenance (`kind`, `source`, `details`) for an
auditor to be told *why* a value changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from builder.banks import ALL_BANKS, Bank

NUM_PCRS = 24
DRTM_PCRS = range(17, 23)  # reset to 0xFF.. at power-on, to 0 by a late launch


def initial_value(pcr: int, bank: Bank, *, late_launch: bool) -> bytes:
    """A PCR's value before the events: 0xFF.. for 17-22 unless a late launch reset them."""
    if pcr in DRTM_PCRS and not late_launch:
        return b"\xff" * bank.size
    return bank.zero


def extend(old: bytes, digest: bytes, bank: Bank) -> bytes:
    """TPM2_PCR_Extend: new = H(old || digest)."""
    if len(old) != bank.size or len(digest) != bank.size:
        raise ValueError(f"{bank}: extend needs {bank.size}-byte values")
    return bank.hash(old + digest)


@dataclass(frozen=True)
class Event:
    pcr: int
    digests: Mapping[Bank, bytes]
    kind: str
    description: str
    source: str = ""
    details: Mapping[str, str] = field(default_factory=dict)
    event_type: int = 0x501  # tboot's event type; SINIT events carry their own

    def __post_init__(self) -> None:
        if not 0 <= self.pcr < NUM_PCRS:
            raise ValueError(f"PCR {self.pcr} out of range 0..23")
        for bank, digest in self.digests.items():
            if len(digest) != bank.size:
                raise ValueError(f"{self.kind}: {bank} digest must have {bank.size} bytes")

    @classmethod
    def measuring(
        cls,
        pcr: int,
        data: bytes,
        kind: str,
        description: str,
        *,
        banks: Iterable[Bank] = ALL_BANKS,
        source: str = "",
        details: Mapping[str, str] | None = None,
    ) -> Event:
        """An event whose digest in each bank is the hash of `data`."""
        return cls(pcr, {b: b.hash(data) for b in banks}, kind, description, source, details or {})

    def to_json(self) -> dict[str, Any]:
        return {
            "pcr": self.pcr,
            "kind": self.kind,
            "description": self.description,
            "source": self.source,
            "details": dict(sorted(self.details.items())),
            "event_type": self.event_type,
            "digests": {b.value: d.hex() for b, d in sorted(self.digests.items())},
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Event:
        return cls(
            pcr=int(obj["pcr"]),
            digests={Bank(k): bytes.fromhex(v) for k, v in obj["digests"].items()},
            kind=str(obj["kind"]),
            description=str(obj["description"]),
            source=str(obj.get("source", "")),
            details=dict(obj.get("details", {})),
            event_type=int(obj.get("event_type", 0x501)),
        )


def replay(
    events: Iterable[Event],
    banks: Iterable[Bank] = ALL_BANKS,
    *,
    late_launch: bool = True,
    start: Mapping[Bank, Mapping[int, bytes]] | None = None,
) -> dict[Bank, dict[int, bytes]]:
    """Values of every PCR touched by `events` (and of those in `start`), per bank."""
    banks = tuple(banks)
    values: dict[Bank, dict[int, bytes]] = {b: dict((start or {}).get(b, {})) for b in banks}
    for ev in events:
        for bank in banks:
            digest = ev.digests.get(bank)
            if digest is None:
                values[bank].setdefault(
                    ev.pcr, initial_value(ev.pcr, bank, late_launch=late_launch)
                )
                continue
            old = values[bank].get(ev.pcr, initial_value(ev.pcr, bank, late_launch=late_launch))
            values[bank][ev.pcr] = extend(old, digest, bank)
    return values
