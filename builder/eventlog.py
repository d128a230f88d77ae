"""Parse TCG PC Client binary event logs and replay them into PCR values. Pure; no I/O.

Two formats (TCG PC Client Platform Firmware Profile, "Event Logging"):

- crypto-agile: a TCG_PCR_EVENT header event (EV_NO_ACTION, PCR 0, 20 zero bytes) whose
  data is the "Spec ID Event03" structure with the table of algorithms and digest sizes,
  then TCG_PCR_EVENT2 records (PCR, type, a count of (algorithm id, digest) pairs, data).
  This is what Linux exposes in /sys/kernel/security/tpm0/binary_bios_measurements for
  a TPM 2.0.
- legacy SHA-1: TCG_PCR_EVENT records only (PCR, type, SHA-1 digest, data).

Parsing is strict and bounded: every size is checked against the bytes left before
anything is sliced, each record consumes at least 12 bytes (so the loop ends), and
counts are bounded by the algorithm table. Any problem raises InputError naming the
byte offset and what is wrong. All integers are little-endian.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from builder.banks import ALL_BANKS, Bank
from builder.errors import InputError, input_error
from builder.pcr import DRTM_PCRS, NUM_PCRS, Event, extend

MAX_LOG_BYTES = 64 * 1024 * 1024  # real logs are kilobytes; refuse anything absurd
MAX_ALGORITHMS = 16  # the TCG registry has far fewer hash algorithms
MAX_DIGEST_SIZE = 128  # digests of algorithms we do not replay are skipped by size

EV_PREBOOT_CERT = 0x0
EV_POST_CODE = 0x1
EV_NO_ACTION = 0x3
EV_SEPARATOR = 0x4
EV_ACTION = 0x5
EV_EVENT_TAG = 0x6
EV_S_CRTM_CONTENTS = 0x7
EV_S_CRTM_VERSION = 0x8
EV_IPL = 0xD
EV_EFI_HCRTM_EVENT = 0x80000010

SPEC_ID_03 = b"Spec ID Event03\0"
STARTUP_LOCALITY = b"StartupLocality\0"

EVENT_TYPE_NAMES: dict[int, str] = {
    0x0: "EV_PREBOOT_CERT",
    0x1: "EV_POST_CODE",
    0x2: "EV_UNUSED",
    0x3: "EV_NO_ACTION",
    0x4: "EV_SEPARATOR",
    0x5: "EV_ACTION",
    0x6: "EV_EVENT_TAG",
    0x7: "EV_S_CRTM_CONTENTS",
    0x8: "EV_S_CRTM_VERSION",
    0x9: "EV_CPU_MICROCODE",
    0xA: "EV_PLATFORM_CONFIG_FLAGS",
    0xB: "EV_TABLE_OF_DEVICES",
    0xC: "EV_COMPACT_HASH",
    0xD: "EV_IPL",
    0xE: "EV_IPL_PARTITION_DATA",
    0xF: "EV_NONHOST_CODE",
    0x10: "EV_NONHOST_CONFIG",
    0x11: "EV_NONHOST_INFO",
    0x12: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    0x80000002: "EV_EFI_VARIABLE_BOOT",
    0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
    0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    0x80000006: "EV_EFI_GPT_EVENT",
    0x80000007: "EV_EFI_ACTION",
    0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES",
    0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2",
    0x8000000C: "EV_EFI_VARIABLE_BOOT2",
    0x80000010: "EV_EFI_HCRTM_EVENT",
    0x800000E0: "EV_EFI_VARIABLE_AUTHORITY",
    0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
}


def alg_name(alg: int) -> str:
    try:
        return Bank.from_alg_id(alg).value
    except KeyError:
        return f"algorithm 0x{alg:04x}"


def event_type_name(event_type: int) -> str:
    return EVENT_TYPE_NAMES.get(event_type, f"0x{event_type:08x}")


@dataclass(frozen=True)
class SpecId:
    """The "Spec ID Event03" header: which algorithms the log carries, and their sizes."""

    platform_class: int
    version: tuple[int, int, int]  # major, minor, errata
    uintn_size: int
    digest_sizes: Mapping[int, int]  # TPM_ALG_ID -> digest size, in log order
    vendor_info: bytes = b""


@dataclass(frozen=True)
class LogEvent:
    """One record of the log. `digests` holds the banks we replay; `other_digests`
    those of algorithms we only skip over (e.g. SM3), by TPM_ALG_ID."""

    index: int
    offset: int
    pcr: int
    event_type: int
    digests: Mapping[Bank, bytes]
    data: bytes
    other_digests: Mapping[int, bytes] = field(default_factory=dict)

    @property
    def type_name(self) -> str:
        return event_type_name(self.event_type)

    @property
    def extends(self) -> bool:
        """EV_NO_ACTION records are informational: the TPM never saw them."""
        return self.event_type != EV_NO_ACTION

    def startup_locality(self) -> int | None:
        """The locality of a StartupLocality EV_NO_ACTION event on PCR 0, else None."""
        if (
            self.event_type == EV_NO_ACTION
            and self.pcr == 0
            and len(self.data) == len(STARTUP_LOCALITY) + 1
            and self.data.startswith(STARTUP_LOCALITY)
        ):
            return self.data[-1]
        return None

    def location(self) -> str:
        """Where the record is, for messages: its number and, in a binary log, offset."""
        if self.offset < 0:
            return f"record {self.index}"
        return f"record {self.index} at offset {self.offset}"

    def describe(self) -> str:
        text = self.data.rstrip(b"\0")
        if text and all(32 <= c < 127 for c in text) and len(text) <= 80:
            return f"{self.type_name} {text.decode()!r}"
        return f"{self.type_name} ({len(self.data)} bytes of event data)"

    def to_event(self) -> Event:
        """This record as an engine Event (for comparing with a prediction)."""
        return Event(
            self.pcr,
            dict(self.digests),
            kind=self.type_name,
            description=self.describe(),
            source=f"event log {self.location()}",
            event_type=self.event_type,
        )


@dataclass(frozen=True)
class EventLog:
    format: str  # "crypto-agile" or "sha1"
    spec_id: SpecId | None
    banks: tuple[Bank, ...]  # banks the log declares that we can replay
    events: tuple[LogEvent, ...]
    unknown_algorithms: tuple[int, ...] = ()  # declared, skipped by size, not replayed


@dataclass(frozen=True)
class Replay:
    """Every PCR per bank after a log, and which PCRs the log's events touched."""

    values: Mapping[Bank, Mapping[int, bytes]]
    touched: Mapping[Bank, frozenset[int]]
    late_launch: bool

    def to_json(self) -> dict[str, dict[str, str]]:
        return {
            bank.value: {str(pcr): value.hex() for pcr, value in sorted(vals.items())}
            for bank, vals in self.values.items()
        }


class _Reader:
    """Bounds-checked little-endian reads; every failure names the offset."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.pos = 0
        self.name = name

    def left(self) -> int:
        return len(self.data) - self.pos

    def fail(self, what: str, *, at: int | None = None, hint: str | None = None) -> InputError:
        offset = self.pos if at is None else at
        return input_error(
            what,
            file=self.name,
            field=f"offset {offset} (0x{offset:x})",
            hint=hint or "the event log is damaged or not a TCG PC Client binary event log",
        )

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.left():
            raise self.fail(
                f"truncated: {what} needs {n} bytes, only {self.left()} left",
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int(struct.unpack("<H", self.take(2, what))[0])

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])


def parse(data: bytes, name: str = "event log") -> EventLog:
    """Parse a whole binary event log; InputError on anything malformed."""
    r = _Reader(data, name)
    if len(data) > MAX_LOG_BYTES:
        raise r.fail(f"log has {len(data)} bytes, more than the {MAX_LOG_BYTES} accepted", at=0)
    if not data:
        raise r.fail("the event log is empty", at=0, hint="read binary_bios_measurements as root")
    first = _legacy_event(r, 0)
    if first.event_type == EV_NO_ACTION and first.pcr == 0 and first.data[:16] == SPEC_ID_03:
        if any(first.digests[Bank.SHA1]):
            raise r.fail("the Spec ID header event must carry a zero digest", at=0)
        spec = _spec_id(first.data, r)
        return _crypto_agile(r, spec)
    events = [first]
    while r.left():
        events.append(_legacy_event(r, len(events)))
    return EventLog("sha1", None, (Bank.SHA1,), tuple(events))


def _pcr_index(r: _Reader, at: int) -> int:
    pcr = r.u32("PCR index")
    if pcr >= NUM_PCRS:
        raise r.fail(f"PCR index {pcr} out of range 0..{NUM_PCRS - 1}", at=at)
    return pcr


def _legacy_event(r: _Reader, index: int) -> LogEvent:
    """TCG_PCR_EVENT: PCR, type, SHA-1 digest, data size, data."""
    at = r.pos
    pcr = _pcr_index(r, at)
    event_type = r.u32("event type")
    digest = r.take(20, "SHA-1 digest")
    size = r.u32("event data size")
    event_data = r.take(size, f"event data of record {index}")
    return LogEvent(index, at, pcr, event_type, {Bank.SHA1: digest}, event_data)


def _spec_id(data: bytes, outer: _Reader) -> SpecId:
    """TCG_EfiSpecIDEvent, read from the header event's data (offsets in the file)."""
    base = 32  # header event: pcr, type, 20-byte digest, size
    r = _Reader(data, outer.name)
    try:
        r.take(16, "Spec ID signature")
        platform_class = r.u32("platformClass")
        minor = r.u8("specVersionMinor")
        major = r.u8("specVersionMajor")
        errata = r.u8("specErrata")
        uintn = r.u8("uintnSize")
        count = r.u32("numberOfAlgorithms")
        if not 1 <= count <= MAX_ALGORITHMS:
            raise r.fail(f"numberOfAlgorithms is {count}; expected 1..{MAX_ALGORITHMS}")
        sizes: dict[int, int] = {}
        for _ in range(count):
            at = r.pos
            alg = r.u16("algorithmId")
            size = r.u16("digestSize")
            if alg in sizes:
                raise r.fail(f"algorithm 0x{alg:04x} listed twice", at=at)
            try:
                bank = Bank.from_alg_id(alg)
            except KeyError:
                bank = None
            if bank is not None and size != bank.size:
                raise r.fail(f"digestSize of {bank} is {size}; it must be {bank.size}", at=at + 2)
            if not 1 <= size <= MAX_DIGEST_SIZE:
                raise r.fail(f"digestSize {size} of algorithm 0x{alg:04x} is absurd", at=at + 2)
            sizes[alg] = size
        vendor_size = r.u8("vendorInfoSize")
        vendor = r.take(vendor_size, "vendorInfo")
        if r.left():
            raise r.fail(f"{r.left()} bytes after vendorInfo in the Spec ID event")
    except InputError as exc:
        # Re-anchor the offset from the header's data to the file.
        raise outer.fail(
            exc.message + " (in the Spec ID header event)",
            at=base + r.pos,
        ) from None
    return SpecId(platform_class, (major, minor, errata), uintn, sizes, vendor)


def _crypto_agile(r: _Reader, spec: SpecId) -> EventLog:
    banks: list[Bank] = []
    unknown: list[int] = []
    for alg in spec.digest_sizes:
        try:
            banks.append(Bank.from_alg_id(alg))
        except KeyError:
            unknown.append(alg)
    events: list[LogEvent] = []
    while r.left():
        events.append(_event2(r, len(events) + 1, spec.digest_sizes))
    return EventLog("crypto-agile", spec, tuple(banks), tuple(events), tuple(unknown))


def _event2(r: _Reader, index: int, sizes: Mapping[int, int]) -> LogEvent:
    """TCG_PCR_EVENT2: PCR, type, TPML_DIGEST_VALUES (count, then alg id + digest), data."""
    at = r.pos
    pcr = _pcr_index(r, at)
    event_type = r.u32("event type")
    count_at = r.pos
    count = r.u32("digest count")
    if count > len(sizes):
        raise r.fail(
            f"record {index}: digest count {count} exceeds the {len(sizes)} algorithms "
            "of the Spec ID header",
            at=count_at,
        )
    digests: dict[Bank, bytes] = {}
    other: dict[int, bytes] = {}
    for _ in range(count):
        alg_at = r.pos
        alg = r.u16("digest algorithm id")
        size = sizes.get(alg)
        if size is None:
            raise r.fail(
                f"record {index}: {alg_name(alg)} is not in the Spec ID header's algorithms",
                at=alg_at,
            )
        digest = r.take(size, f"{alg_name(alg)} digest of record {index}")
        try:
            bank: Bank | None = Bank.from_alg_id(alg)
        except KeyError:
            bank = None
        if (bank in digests) or (alg in other):
            raise r.fail(f"record {index}: {alg_name(alg)} digest appears twice", at=alg_at)
        if bank is None:
            other[alg] = digest
        else:
            digests[bank] = digest
    size = r.u32("event data size")
    event_data = r.take(size, f"event data of record {index}")
    return LogEvent(index, at, pcr, event_type, digests, event_data, other)


def from_events(events: Sequence[Event], fmt: str = "cel-json") -> EventLog:
    """A log made of engine Events (e.g. read from CEL-JSON): records numbered from 0,
    no byte offsets, the banks any event carries."""
    banks = tuple(b for b in ALL_BANKS if any(b in ev.digests for ev in events))
    records = tuple(
        LogEvent(i, -1, ev.pcr, ev.event_type, dict(ev.digests), ev.description.encode())
        for i, ev in enumerate(events)
    )
    return EventLog(fmt, None, banks, records)


def drtm_log(events: Sequence[LogEvent]) -> bool:
    """A log that extends PCR 17-22 comes from a late launch, which reset them to zero."""
    return any(ev.pcr in DRTM_PCRS and ev.extends for ev in events)


def replay_log(log: EventLog, *, late_launch: bool | None = None, name: str = "") -> Replay:
    """All 24 PCRs of every replayable bank after the log's events.

    Starting values follow the TPM: PCR 0-16 and 23 zero, 17-22 all ones unless a late
    launch reset them (`late_launch`; by default: the log extends one of them). A
    StartupLocality event (EV_NO_ACTION on PCR 0) sets PCR 0's start to its locality in
    the last byte, as does an H-CRTM event (locality 4), as in the PC Client profile.
    """
    if late_launch is None:
        late_launch = drtm_log(log.events)
    values: dict[Bank, dict[int, bytes]] = {}
    touched: dict[Bank, set[int]] = {b: set() for b in log.banks}
    for bank in log.banks:
        values[bank] = {
            pcr: (b"\xff" * bank.size if pcr in DRTM_PCRS and not late_launch else bank.zero)
            for pcr in range(NUM_PCRS)
        }
    pcr0_locality: int | None = None
    for ev in log.events:
        locality = ev.startup_locality()
        if ev.event_type == EV_EFI_HCRTM_EVENT and ev.pcr == 0 and pcr0_locality is None:
            locality = 4
        if locality is not None:
            if any(0 in t for t in touched.values()) or pcr0_locality is not None:
                raise input_error(
                    f"record {ev.index}: StartupLocality after PCR 0 was already set",
                    file=name or None,
                    field=f"offset {ev.offset} (0x{ev.offset:x})",
                    hint="a StartupLocality event must come before any PCR 0 measurement",
                )
            pcr0_locality = locality
            for bank in log.banks:
                values[bank][0] = bank.zero[:-1] + bytes([locality])
                touched[bank].add(0)
        if not ev.extends:
            continue
        for bank, digest in ev.digests.items():
            values[bank][ev.pcr] = extend(values[bank][ev.pcr], digest, bank)
            touched[bank].add(ev.pcr)
    return Replay(values, {b: frozenset(t) for b, t in touched.items()}, late_launch)
