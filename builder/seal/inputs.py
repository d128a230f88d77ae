"""Parsing the seal command's inputs: sizes, PCR lists, predicted-values files."""

from __future__ import annotations

import json
import re
from pathlib import Path

from builder.banks import Bank
from builder.errors import input_error
from builder.seal.policy import Predicted

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^(\d+)\s*([KMGT]?)(?:i?B)?$", re.IGNORECASE)


def parse_size(text: str, *, field: str = "size") -> int:
    """`67108864`, `64M`, `64MiB`, `1G` -> bytes (powers of 1024)."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise input_error(f"cannot read size {text!r}", field=field, hint="e.g. 64M or 1G")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def parse_pcrs(text: str, *, field: str = "pcrs") -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise input_error(
            f"cannot read PCR list {text!r}", field=field, hint="e.g. 11,17,18,19"
        ) from None


def load_predicted(path: Path, bank: Bank) -> Predicted:
    """{"mode": {"PCR": "hex value", ...}, ...} as a JSON file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise input_error(f"cannot read predicted PCR values: {exc.strerror}", file=path) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise input_error(f"not JSON: {exc}", file=path) from None
    if not isinstance(data, dict) or not data:
        raise input_error(
            "expected an object of modes", file=path, hint='{"normal": {"11": "00..", ...}}'
        )
    out: dict[str, dict[int, bytes]] = {}
    for mode, values in data.items():
        if not isinstance(values, dict):
            raise input_error("expected an object of PCR values", file=path, field=mode)
        out[mode] = {}
        for pcr, value in values.items():
            try:
                raw = bytes.fromhex(str(value))
                out[mode][int(pcr)] = raw
            except ValueError:
                raise input_error(
                    f"PCR {pcr!r}: not a PCR index with a hex value", file=path, field=mode
                ) from None
            if len(raw) != bank.size:
                raise input_error(
                    f"PCR {pcr}: {len(raw)} bytes, {bank} values have {bank.size}",
                    file=path,
                    field=mode,
                    hint="pick the bank with --bank",
                )
    return out
