"""Export predicted events as TCG Canonical Event Log (CEL) JSON, and read it back. Pure.

CEL-JSON (TCG "Canonical Event Log Format" v1.0, JSON encoding) is an array of
records. Each record here is
    {"recnum": N, "pcr": P,
     "digests": [{"hashAlg": "sha256", "digest": "<hex>"}, ...],
     "content_type": "pcclient_std",
     "content": {"event_type": <name or number>, "event_data": "<hex>"}}
`recnum` numbers the records from 0 in log order; digests are listed in ascending
TPM_ALG_ID order. The PC Client content carries the TCG event type (its name when
it is a PC Client type, else the number, e.g. tboot's 0x501 = 1281) and as event data
the UTF-8 of the event's description: what was measured, for a human auditor; the
digests are what the TPM extends. systemd and tpm2-tss's libcel write the same shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from builder.banks import Bank
from builder.eventlog import EVENT_TYPE_NAMES
from builder.pcr import NUM_PCRS, Event

CONTENT_TYPE = "pcclient_std"
_TYPE_BY_NAME = {name: code for code, name in EVENT_TYPE_NAMES.items()}


def to_cel(events: Iterable[Event]) -> list[dict[str, Any]]:
    """The CEL-JSON array for `events`, in order."""
    out = []
    for recnum, ev in enumerate(events):
        out.append(
            {
                "recnum": recnum,
                "pcr": ev.pcr,
                "digests": [
                    {"hashAlg": bank.value, "digest": digest.hex()}
                    for bank, digest in sorted(ev.digests.items(), key=lambda kv: kv[0].alg_id)
                ],
                "content_type": CONTENT_TYPE,
                "content": {
                    "event_type": EVENT_TYPE_NAMES.get(ev.event_type, ev.event_type),
                    "event_data": ev.description.encode().hex(),
                },
            }
        )
    return out


class CelError(ValueError):
    """A CEL-JSON document this reader cannot use; the message names the record."""


def from_cel(records: Sequence[Mapping[str, Any]]) -> list[Event]:
    """Events from a CEL-JSON array of PC Client records (for replay and tests)."""
    if not isinstance(records, list):
        raise CelError("a CEL-JSON log is an array of records")
    events = []
    for i, rec in enumerate(records):
        where = f"record {i}"
        if not isinstance(rec, dict):
            raise CelError(f"{where}: not an object")
        pcr = rec.get("pcr")
        if not isinstance(pcr, int) or isinstance(pcr, bool) or not 0 <= pcr < NUM_PCRS:
            raise CelError(f"{where}: pcr must be an integer 0..23 (NV index records unsupported)")
        if rec.get("content_type") != CONTENT_TYPE:
            raise CelError(f"{where}: content_type {rec.get('content_type')!r} unsupported")
        raw_digests = rec.get("digests", [])
        if not isinstance(raw_digests, list):
            raise CelError(f"{where}: digests must be an array")
        digests: dict[Bank, bytes] = {}
        for d in raw_digests:
            try:
                bank = Bank(str(d["hashAlg"]).lower())
                digests[bank] = bytes.fromhex(d["digest"])
            except (KeyError, TypeError, ValueError) as exc:
                raise CelError(f"{where}: bad digest {d!r}: {exc}") from None
        content = rec.get("content", {})
        if not isinstance(content, dict):
            raise CelError(f"{where}: content must be an object")
        raw_type = content.get("event_type", 0)
        if isinstance(raw_type, str):
            event_type = _TYPE_BY_NAME.get(raw_type.upper(), -1)
        else:
            event_type = raw_type
        if not isinstance(event_type, int) or isinstance(event_type, bool):
            raise CelError(f"{where}: unknown event_type {raw_type!r}")
        if not 0 <= event_type < 2**32:
            raise CelError(f"{where}: unknown event_type {raw_type!r}")
        raw_data = content.get("event_data", "")
        try:
            if not isinstance(raw_data, str):
                raise TypeError
            data = bytes.fromhex(raw_data)
        except (TypeError, ValueError):
            raise CelError(f"{where}: event_data is not hex") from None
        try:
            events.append(
                Event(
                    pcr,
                    digests,
                    kind=EVENT_TYPE_NAMES.get(event_type, f"0x{event_type:08x}"),
                    description=data.decode(errors="replace"),
                    source=f"CEL {where}",
                    event_type=event_type,
                )
            )
        except ValueError as exc:
            raise CelError(f"{where}: {exc}") from None
    return events
