"""`actvsm replay LOG`: compute every PCR from a TCG binary event log, and check it.

With `--pcrs FILE` the result is compared with PCR values read from a TPM; with
`--manifest M --mode X`, with the prediction of that boot mode. Exit status 0 when
everything compared is equal, 1 when something differs, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from builder import cel, eventlog, logcheck
from builder.commands import common
from builder.errors import EXIT_FAILED, EXIT_OK, input_error
from builder.ui import emit

MAX_TEXT_INPUT = 16 * 1024 * 1024


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        parents=[common()],
        help="compute PCRs from a TCG binary event log and compare them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "log",
        help="binary event log (e.g. /sys/kernel/security/tpm0/binary_bios_measurements) "
        "or a CEL-JSON log",
    )
    p.add_argument("--pcrs", metavar="FILE", help="PCR values from the TPM (`tpm2_pcrread` output)")
    p.add_argument(
        "--manifest", metavar="M", help="manifest.json (or OUTDIR/<name>) to compare the log with"
    )
    p.add_argument("--mode", metavar="X", help="boot mode of the manifest (with --manifest)")
    p.set_defaults(func=run)


def read_input(path: str, what: str, limit: int) -> bytes:
    """Read a whole (small) input file; missing/unreadable/huge files are input errors."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise input_error(f"cannot read {what}: {exc.strerror}", file=path) from None
    if len(data) > limit:
        raise input_error(f"{what} is larger than {limit} bytes", file=path)
    return data


def read_log(data: bytes, name: str) -> eventlog.EventLog:
    """A binary TCG log, or a CEL-JSON log (a JSON array, as `builder.cel` exports)."""
    if data.lstrip()[:1] != b"[":
        return eventlog.parse(data, name)
    try:
        records = json.loads(data)
        events = cel.from_cel(records)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise input_error(f"not a binary event log, nor CEL-JSON: {exc}", file=name) from None
    except cel.CelError as exc:
        raise input_error(f"CEL-JSON: {exc}", file=name) from None
    return eventlog.from_events(events)


def run(args: argparse.Namespace) -> int:
    if (args.manifest is None) != (args.mode is None):
        raise input_error(
            "--manifest and --mode go together",
            hint="e.g. actvsm replay LOG --manifest out/default/manifest.json --mode normal",
        )
    data = read_input(args.log, "event log", eventlog.MAX_LOG_BYTES)
    log = read_log(data, args.log)
    replay = eventlog.replay_log(log, name=args.log)
    result: dict[str, Any] = {
        "log": args.log,
        "format": log.format,
        "records": len(log.events),
        "late_launch": replay.late_launch,
        "pcrs": replay.to_json(),
        "extended": {b.value: sorted(t) for b, t in replay.touched.items()},
        "unknown_algorithms": [f"0x{a:04x}" for a in log.unknown_algorithms],
    }
    lines = _describe_log(log, replay)
    status = EXIT_OK
    if args.pcrs is not None:
        text = read_input(args.pcrs, "PCR file", MAX_TEXT_INPUT).decode(errors="replace")
        tpm = logcheck.parse_pcr_values(text, args.pcrs)
        diffs, uncovered, compared = logcheck.compare_with_tpm(replay, tpm)
        if compared == 0:
            raise input_error(
                "no PCR in the file is extended by the log in a bank the log carries",
                file=args.pcrs,
                hint="read the PCRs the log extends, e.g. `tpm2_pcrread sha256:0,1,2,3,4,5,6,7`",
            )
        result["pcr_check"] = {
            "file": args.pcrs,
            "equal": not diffs,
            "compared": compared,
            "differences": [d.to_json() for d in diffs],
            "not_covered": [d.to_json() for d in uncovered],
        }
        lines.append("")
        if diffs:
            status = EXIT_FAILED
            lines.append(f"TPM PCRs ({args.pcrs}): {len(diffs)} of {compared} differ from the log:")
            lines += [
                f"  {d.bank}:{d.pcr}  log {d.expected.hex()}  tpm {d.actual.hex()}" for d in diffs
            ]
        else:
            lines.append(f"TPM PCRs ({args.pcrs}): all {compared} PCR values the log extends match")
        by_pcr: dict[int, list[str]] = {}
        for d in uncovered:
            by_pcr.setdefault(d.pcr, []).append(d.bank.value)
        for pcr, banks in sorted(by_pcr.items()):
            lines.append(
                f"  note: PCR {pcr} ({', '.join(banks)}) is not extended by the log but is not "
                "at its reset value in the TPM (measured after the log, e.g. IMA on PCR 10)"
            )
    if args.manifest is not None:
        if os.path.isdir(args.manifest):  # a build's OUTDIR/<name>
            args.manifest = os.path.join(args.manifest, "manifest.json")
        raw = read_input(args.manifest, "manifest", MAX_TEXT_INPUT)
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise input_error(f"not JSON: {exc}", file=args.manifest) from None
        predicted, values = logcheck.parse_manifest_mode(doc, args.mode, args.manifest)
        divergence = logcheck.first_divergence(predicted, log.events)
        value_diffs = logcheck.compare_values(values, replay)
        equal = divergence is None and not value_diffs
        result["manifest_check"] = {
            "manifest": args.manifest,
            "mode": args.mode,
            "equal": equal,
            "first_divergence": None if divergence is None else divergence.to_json(),
            "value_differences": [d.to_json() for d in value_diffs],
        }
        lines.append("")
        if equal:
            lines.append(
                f"manifest {args.manifest}, mode {args.mode}: the log matches the "
                f"{len(predicted)} predicted events and the predicted PCR values"
            )
        else:
            status = EXIT_FAILED
            lines.append(f"manifest {args.manifest}, mode {args.mode}: the log differs")
            if divergence is not None:
                lines.append(f"  first divergence: {divergence.describe()}")
            for d in value_diffs:
                lines.append(
                    f"  {d.bank}:{d.pcr}  predicted {d.expected.hex()}  log {d.actual.hex()}"
                )
    result["equal"] = status == EXIT_OK
    emit(result, "\n".join(lines), as_json=args.json)
    return status


def _describe_log(log: eventlog.EventLog, replay: eventlog.Replay) -> list[str]:
    lines = [
        f"{log.format} event log, {len(log.events)} records, banks: "
        + ", ".join(b.value for b in log.banks)
    ]
    if replay.late_launch:
        lines.append("  the log extends PCR 17-22: a late launch, so they start at zero")
    if log.unknown_algorithms:
        lines.append(
            "  not replayed (unknown algorithms): "
            + ", ".join(f"0x{a:04x}" for a in log.unknown_algorithms)
        )
    for bank in log.banks:
        lines.append(f"{bank}:")
        for pcr in sorted(replay.touched[bank]):
            lines.append(f"  {pcr:2d} : {replay.values[bank][pcr].hex()}")
    lines.append("(PCRs not listed are not extended by the log and keep their reset values)")
    return lines
