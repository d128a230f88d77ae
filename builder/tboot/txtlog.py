"""Reading a TXT event log (TCG PC Client crypto-agile binary format) into a profile. Pure.

This is the format of a TPM 2.0 TXT/tboot event log (and of the logs `tpm2_eventlog`
reads): a TCG_PCClientPCREvent header whose "Spec ID Event03" names the banks, then
TCG_PCR_EVENT2 records (PCR, type, digest per bank, event data).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from builder.banks import Bank
from builder.errors import InputError
from builder.platform import (
    TBOOT_EVENT_TYPE,
    TXT_EVENT_NAMES,
    TXT_EVENT_TYPES,
    Extpol,
    PcrMapping,
    Platform,
    SinitEvent,
    TpmFamily,
)

EV_NO_ACTION = 3
SPEC_ID = b"Spec ID Event03\x00"


@dataclass(frozen=True)
class LogEvent:
    pcr: int
    event_type: int
    digests: dict[Bank, bytes]
    data: bytes


def parse_tcg2_log(blob: bytes, what: str = "event log") -> tuple[tuple[Bank, ...], list[LogEvent]]:
    """(banks named by the log header, events after the header)."""

    def need(off: int, n: int, where: str) -> None:
        if off + n > len(blob):
            raise InputError(f"{what}: cut short in {where} at byte {off}")

    need(0, 32, "the header event")
    pcr, etype = struct.unpack_from("<II", blob, 0)
    (size,) = struct.unpack_from("<I", blob, 28)
    need(32, size, "the header event")
    spec = blob[32 : 32 + size]
    if etype != EV_NO_ACTION or not spec.startswith(SPEC_ID):
        raise InputError(
            f"{what}: not a crypto-agile TCG event log (no 'Spec ID Event03' header)",
            hint="give the binary TPM 2.0 event log (TPM 1.2 TXT logs are not supported)",
        )
    if len(spec) < 28:
        raise InputError(f"{what}: Spec ID event too short")
    (nalgs,) = struct.unpack_from("<I", spec, 24)
    sizes: dict[int, int] = {}
    for i in range(nalgs):
        if 28 + 4 * i + 4 > len(spec):
            raise InputError(f"{what}: Spec ID event lists more algorithms than it holds")
        alg, dsize = struct.unpack_from("<HH", spec, 28 + 4 * i)
        sizes[alg] = dsize
    banks = tuple(Bank.from_alg_id(a) for a in sizes if a in (4, 0xB, 0xC, 0xD))
    off = 32 + size
    events = []
    while off < len(blob):
        need(off, 12, "an event")
        pcr, etype, count = struct.unpack_from("<III", blob, off)
        off += 12
        digests: dict[Bank, bytes] = {}
        for _ in range(count):
            need(off, 2, "a digest")
            (alg,) = struct.unpack_from("<H", blob, off)
            off += 2
            if alg not in sizes:
                raise InputError(f"{what}: digest of algorithm {alg:#x} not in the header")
            need(off, sizes[alg], "a digest")
            if alg in (4, 0xB, 0xC, 0xD):
                digests[Bank.from_alg_id(alg)] = blob[off : off + sizes[alg]]
            off += sizes[alg]
        need(off, 4, "an event size")
        (esize,) = struct.unpack_from("<I", blob, off)
        off += 4
        need(off, esize, "event data")
        events.append(LogEvent(pcr, etype, digests, blob[off : off + esize]))
        off += esize
    return banks, events


def capture_platform(blob: bytes, *, name: str, source: str = "") -> Platform:
    """A profile from a TXT event log: HASH_START and SINIT's PCR 17/18 events, the
    MLE_HASH as a placeholder; tboot's own events (0x501) dropped, but their banks tell
    the extpol in use."""
    where = source or "event log"
    banks, events = parse_tcg2_log(blob, where)
    if not banks:
        raise InputError(f"{where}: the log has none of the sha1/sha256/sha384/sha512 banks")
    drtm = [e for e in events if e.pcr in (17, 18) and e.event_type != EV_NO_ACTION]
    tboot = [e for e in drtm if e.event_type == TBOOT_EVENT_TYPE]
    sinit = [e for e in drtm if e.event_type != TBOOT_EVENT_TYPE]
    if not sinit or sinit[0].event_type != TXT_EVENT_TYPES["HASH_START"] or sinit[0].pcr != 17:
        raise InputError(f"{where}: no HASH_START event first on PCR 17: not a TXT launch log")
    out: list[SinitEvent] = []
    for e in sinit:
        missing = [b.value for b in banks if b not in e.digests]
        if missing:
            label = TXT_EVENT_NAMES.get(e.event_type, hex(e.event_type))
            raise InputError(f"{where}: {label} on PCR {e.pcr} lacks bank(s) {missing}")
    for e in sinit[1:]:
        name_ = TXT_EVENT_NAMES.get(e.event_type)
        if name_ is None or name_ == "HASH_START":
            raise InputError(f"{where}: unexpected event type {e.event_type:#x} on PCR {e.pcr}")
        digests = None if name_ == "MLE_HASH" else {b: e.digests[b] for b in banks}
        out.append(SinitEvent(e.pcr, name_, e.event_type, digests))
    mle = [e for e in out if e.name == "MLE_HASH"]
    if len(mle) != 1:
        raise InputError(f"{where}: expected one MLE_HASH event, found {len(mle)}")
    mapping = PcrMapping.DA if mle[0].pcr == 17 else PcrMapping.LEGACY
    tboot_banks = {b for e in tboot for b in e.digests}
    if len(tboot_banks) == 1:
        extpol = Extpol(next(iter(tboot_banks)).value)
    elif tboot_banks:
        extpol = Extpol.EMBEDDED
    else:
        extpol = Extpol.SHA256
    hs = sinit[0]
    return Platform(
        name=name,
        description=f"captured from {source or 'a TXT event log'}",
        tpm=TpmFamily.TPM20,
        mapping=mapping,
        extpol=extpol,
        banks=banks,
        hash_start=SinitEvent(17, "HASH_START", hs.event_type, {b: hs.digests[b] for b in banks}),
        events=tuple(out),
        source=source,
    )
