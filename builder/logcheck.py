"""Compare a replayed event log with PCRs read from a TPM or with a manifest's prediction.

Pure functions over parsed data; `builder/commands/replay.py` does the file handling.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from builder.banks import Bank, parse_bank
from builder.errors import input_error
from builder.eventlog import LogEvent, Replay
from builder.pcr import NUM_PCRS, Event

PcrValues = dict[Bank, dict[int, bytes]]


@dataclass(frozen=True)
class PcrDifference:
    bank: Bank
    pcr: int
    expected: bytes  # from the log (or the prediction)
    actual: bytes  # from the TPM (or the log)

    def to_json(self) -> dict[str, Any]:
        return {
            "bank": self.bank.value,
            "pcr": self.pcr,
            "expected": self.expected.hex(),
            "actual": self.actual.hex(),
        }


PCRREAD_HINT = "give the output of `tpm2_pcrread` (e.g. `tpm2_pcrread sha256 > pcrs.yaml`)"
_BANK_LINE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*:\s*$")
_PCR_LINE = re.compile(r"^\s*(\d+)\s*:\s*(0x)?([0-9A-Fa-f]+)\s*$")


def parse_pcr_values(text: str, name: str) -> PcrValues:
    """PCR values as `tpm2_pcrread` prints them (`bank:` then `  N : 0xHEX` lines), or
    the JSON of `actvsm replay --json` (its `pcrs`: bank -> PCR -> hex). Read line by
    line rather than as YAML: YAML 1.1 would turn `0x00..` into an integer and lose
    the value's length, which we check."""
    if text.lstrip().startswith("{"):
        return _parse_pcr_json(text, name)
    out: PcrValues = {}
    bank: Bank | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _BANK_LINE.match(line)
        if m:
            try:
                bank = parse_bank(m.group(1))
            except ValueError as exc:
                raise input_error(str(exc), file=name, line=lineno) from None
            if bank in out:
                raise input_error(f"bank {bank} listed twice", file=name, line=lineno)
            out[bank] = {}
            continue
        m = _PCR_LINE.match(line)
        if m is None or bank is None:
            raise input_error(
                "expected `bank:` or `  N : 0xVALUE`", file=name, line=lineno, hint=PCRREAD_HINT
            )
        out[bank][_pcr_number(m.group(1), name, lineno)] = _pcr_value(
            m.group(3), bank, name, lineno
        )
    if not out:
        raise input_error("no PCR values found", file=name, hint=PCRREAD_HINT)
    return out


def _pcr_number(text: str, name: str, lineno: int | None, field: str | None = None) -> int:
    pcr = int(text) if text.isdigit() else -1
    if not 0 <= pcr < NUM_PCRS:
        raise input_error(f"PCR {text!r} is not in 0..23", file=name, line=lineno, field=field)
    return pcr


def _pcr_value(
    text: str, bank: Bank, name: str, lineno: int | None, field: str | None = None
) -> bytes:
    try:
        value = bytes.fromhex(text.lower().removeprefix("0x"))
    except ValueError:
        raise input_error("PCR value is not hex", file=name, line=lineno, field=field) from None
    if len(value) != bank.size:
        raise input_error(
            f"value has {len(value)} bytes, {bank} needs {bank.size}",
            file=name,
            line=lineno,
            field=field,
        )
    return value


def _parse_pcr_json(text: str, name: str) -> PcrValues:
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise input_error(f"not JSON: {exc}", file=name, hint=PCRREAD_HINT) from None
    pcrs = doc.get("pcrs") if isinstance(doc, dict) else None
    if not isinstance(pcrs, dict) or not pcrs:
        raise input_error("expected an object with `pcrs`", file=name, hint=PCRREAD_HINT)
    out: PcrValues = {}
    for bank_name, values in pcrs.items():
        try:
            bank = parse_bank(str(bank_name))
        except ValueError as exc:
            raise input_error(str(exc), file=name, field=f"pcrs.{bank_name}") from None
        if not isinstance(values, dict):
            raise input_error("expected an object", file=name, field=f"pcrs.{bank}")
        out[bank] = {
            _pcr_number(str(k), name, None, f"pcrs.{bank}.{k}"): _pcr_value(
                str(v), bank, name, None, f"pcrs.{bank}.{k}"
            )
            for k, v in values.items()
        }
    return out


def compare_with_tpm(
    replay: Replay, tpm: Mapping[Bank, Mapping[int, bytes]]
) -> tuple[list[PcrDifference], list[PcrDifference], int]:
    """(differences in PCRs the log extends, PCRs the log does not cover whose TPM value
    is not their reset value, number of PCR values compared).

    Only PCRs the log extends are the log's claim; others (PCR 10 holds IMA's
    measurements on Linux, for instance) are reported but not counted as differences.
    """
    diffs: list[PcrDifference] = []
    uncovered: list[PcrDifference] = []
    compared = 0
    for bank, tpm_values in sorted(tpm.items()):
        if bank not in replay.values:
            continue
        for pcr, actual in sorted(tpm_values.items()):
            expected = replay.values[bank][pcr]
            if pcr in replay.touched[bank]:
                compared += 1
                if expected != actual:
                    diffs.append(PcrDifference(bank, pcr, expected, actual))
            elif expected != actual:
                uncovered.append(PcrDifference(bank, pcr, expected, actual))
    return diffs, uncovered, compared


@dataclass(frozen=True)
class Divergence:
    """Where the log first departs from the prediction for one PCR."""

    pcr: int
    position: int  # 0-based position among that PCR's events
    reason: str  # "digest", "missing" (predicted, not in the log) or "unexpected"
    predicted: Event | None
    observed: LogEvent | None
    banks: tuple[Bank, ...] = ()

    def order(self) -> float:
        """Log order: where in the log this divergence is first visible."""
        if self.observed is not None:
            return float(self.observed.index)
        return float("inf")

    def describe(self) -> str:
        where = f"PCR {self.pcr}, event {self.position + 1} of that PCR"
        if self.reason == "digest" and self.predicted and self.observed:
            bank = self.banks[0]
            return (
                f"{where}: predicted {self.predicted.kind} ({self.predicted.description}) "
                f"{bank} {self.predicted.digests[bank].hex()}, but log record "
                f"{self.observed.index} at offset {self.observed.offset} "
                f"({self.observed.describe()}) has {self.observed.digests[bank].hex()}"
            )
        if self.reason == "missing" and self.predicted:
            return (
                f"{where}: predicted {self.predicted.kind} ({self.predicted.description}) "
                "is not in the log"
            )
        if self.reason == "no-common-bank" and self.predicted and self.observed:
            return (
                f"{where}: log record {self.observed.index} and the prediction "
                f"({self.predicted.kind}) share no bank to compare"
            )
        assert self.observed is not None
        return (
            f"{where}: log {self.observed.location()} ({self.observed.describe()}) "
            "was not predicted"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "pcr": self.pcr,
            "position": self.position,
            "reason": self.reason,
            "predicted": None if self.predicted is None else self.predicted.to_json(),
            "log_record": None if self.observed is None else self.observed.index,
            "log_offset": None
            if self.observed is None or self.observed.offset < 0
            else self.observed.offset,
            "message": self.describe(),
        }


def first_divergence(
    predicted: Sequence[Event], log_events: Sequence[LogEvent]
) -> Divergence | None:
    """Compare, PCR by PCR, the predicted events with the log's extends of the same PCRs
    (digests in every bank both carry); return the divergence earliest in the log."""
    found: list[Divergence] = []
    for pcr in sorted({ev.pcr for ev in predicted}):
        want = [ev for ev in predicted if ev.pcr == pcr]
        have = [ev for ev in log_events if ev.pcr == pcr and ev.extends]
        for i, (p, o) in enumerate(zip(want, have, strict=False)):
            common = tuple(b for b in sorted(p.digests) if b in o.digests)
            if not common:
                found.append(Divergence(pcr, i, "no-common-bank", p, o))
                break
            differing = tuple(b for b in common if p.digests[b] != o.digests[b])
            if differing:
                found.append(Divergence(pcr, i, "digest", p, o, differing))
                break
        else:
            if len(have) < len(want):
                found.append(Divergence(pcr, len(have), "missing", want[len(have)], None))
            elif len(have) > len(want):
                found.append(Divergence(pcr, len(want), "unexpected", None, have[len(want)]))
    if not found:
        return None
    return min(found, key=lambda d: (d.order(), d.pcr))


def parse_manifest_mode(doc: object, mode: str, name: str) -> tuple[list[Event], PcrValues]:
    """The predicted events and PCR values of `mode` from a manifest document."""
    if not isinstance(doc, dict) or doc.get("format") != "actvsm-manifest":
        raise input_error(
            'not an actvsm manifest (no "format": "actvsm-manifest")',
            file=name,
            hint="give the manifest.json of a build output",
        )
    if doc.get("version") != 1:
        raise input_error(
            f"manifest version {doc.get('version')!r} is not supported (this tool reads 1)",
            file=name,
            field="version",
        )
    modes = doc.get("modes")
    if not isinstance(modes, dict) or mode not in modes:
        known = ", ".join(sorted(modes)) if isinstance(modes, dict) else "none"
        raise input_error(
            f"mode {mode!r} is not in the manifest",
            file=name,
            field="modes",
            hint=f"modes: {known}",
        )
    entry = modes[mode]
    base = f"modes.{mode}"
    if not isinstance(entry, dict) or not isinstance(entry.get("events"), list):
        raise input_error("expected an object with an `events` list", file=name, field=base)
    events: list[Event] = []
    for i, raw in enumerate(entry["events"]):
        try:
            if not isinstance(raw, dict):
                raise TypeError("not an object")
            events.append(Event.from_json(raw))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise input_error(f"bad event: {exc}", file=name, field=f"{base}.events[{i}]") from None
    values: PcrValues = {}
    _parse_pcr_values(entry.get("pcrs", {}), name, f"{base}.pcrs", values)
    # A boot's log goes on past the prediction's unseal point with the initramfs's phase
    # cap; compare against the values after it.
    cap = entry.get("phase_cap")
    if isinstance(cap, dict) and "event" in cap:
        try:
            events.append(Event.from_json(cap["event"]))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise input_error(
                f"bad event: {exc}", file=name, field=f"{base}.phase_cap.event"
            ) from None
        _parse_pcr_values(cap.get("pcrs_after", {}), name, f"{base}.phase_cap.pcrs_after", values)
    return events, values


def _parse_pcr_values(pcrs: object, name: str, where: str, values: PcrValues) -> None:
    """Merge a manifest's bank -> PCR -> hex object into `values`."""
    if not isinstance(pcrs, dict):
        raise input_error("expected an object", file=name, field=where)
    for bank_name, vals in pcrs.items():
        field = f"{where}.{bank_name}"
        try:
            bank = parse_bank(str(bank_name))
        except ValueError as exc:
            raise input_error(str(exc), file=name, field=field) from None
        if not isinstance(vals, dict):
            raise input_error("expected an object", file=name, field=field)
        values.setdefault(bank, {})
        for key, hexval in vals.items():
            try:
                pcr = int(key)
                if not 0 <= pcr < NUM_PCRS:
                    raise ValueError(f"PCR {pcr} out of range")
                value = bytes.fromhex(str(hexval))
                if len(value) != bank.size:
                    raise ValueError(f"needs {bank.size} bytes")
            except (ValueError, TypeError) as exc:
                raise input_error(
                    f"bad PCR value: {exc}", file=name, field=f"{field}.{key}"
                ) from None
            values[bank][pcr] = value


def compare_values(
    predicted: Mapping[Bank, Mapping[int, bytes]], replay: Replay
) -> list[PcrDifference]:
    """Predicted PCR values (expected) against the log's (actual), banks both have."""
    out: list[PcrDifference] = []
    for bank, vals in sorted(predicted.items()):
        if bank not in replay.values:
            continue
        for pcr, value in sorted(vals.items()):
            if replay.values[bank][pcr] != value:
                out.append(PcrDifference(bank, pcr, value, replay.values[bank][pcr]))
    return out
