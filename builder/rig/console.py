"""What a test guest prints on its serial console, and how the host reads it back. Pure.

The guest side is busy-box shell lines to put in an `/init`; the host side parses the
console text of a `BootResult`. Files travel base64-encoded between marker lines, so a
binary TPM event log survives the serial line.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

from builder.banks import Bank
from builder.errors import BuildError

BLOB_BEGIN = "ACTVSM-BEGIN"
BLOB_END = "ACTVSM-END"
PCR_LINE = "ACTVSM-PCR"
EVENTLOG = "/sys/kernel/security/tpm0/binary_bios_measurements"

_BASE64_LINE = re.compile(r"[A-Za-z0-9+/=]+")
_PCR_LINE = re.compile(PCR_LINE + r" (\w+) (\d+) (\S*)\s*\Z")


def send_file_script(path: str, name: str) -> str:
    """Shell lines for the guest (busybox sh) that print `path` base64-encoded between
    markers, to be recovered on the host with `extract_file(console, name)`."""
    return f'echo "{BLOB_BEGIN} {name}"; base64 "{path}"; echo "{BLOB_END} {name}"\n'


def send_eventlog_script() -> str:
    """Mount securityfs if needed and send the TPM event log as file "eventlog"."""
    return (
        "grep -q securityfs /proc/mounts || "
        "mount -t securityfs securityfs /sys/kernel/security\n"
        + send_file_script(EVENTLOG, "eventlog")
    )


def extract_file(console: str, name: str, occurrence: int = 0) -> bytes:
    """The file the guest sent with `send_file_script(.., name)` (the `occurrence`-th
    time, counting from 0: a guest that reboots sends it again); BuildError if absent."""
    begin, end = f"{BLOB_BEGIN} {name}", f"{BLOB_END} {name}"
    lines = [line.strip() for line in console.splitlines()]
    starts = [i for i, line in enumerate(lines) if line == begin]
    if len(starts) <= occurrence:
        raise BuildError(f"the guest console has no '{name}' file (occurrence {occurrence})")
    first = starts[occurrence] + 1
    try:
        last = lines.index(end, first)
    except ValueError:
        raise BuildError(f"the guest console's '{name}' file is cut off") from None
    payload = "".join(line for line in lines[first:last] if _BASE64_LINE.fullmatch(line))
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise BuildError(f"the guest console's '{name}' file is garbled: {exc}") from None


def print_pcrs_script(pcrs: Iterable[int], banks: Iterable[Bank]) -> str:
    """Shell lines printing each PCR from sysfs as `ACTVSM-PCR <bank> <pcr> <hex>`."""
    pcr_list = " ".join(str(p) for p in pcrs)
    bank_list = " ".join(b.value for b in banks)
    return (
        f"for b in {bank_list}; do for p in {pcr_list}; do "
        f'echo "{PCR_LINE} $b $p $(cat /sys/class/tpm/tpm0/pcr-$b/$p)"; done; done\n'
    )


def parse_pcrs(console: str) -> list[dict[Bank, dict[int, bytes]]]:
    """PCR values printed by `print_pcrs_script`, one dict per boot (a PCR printed again
    starts a new one)."""
    boots: list[dict[Bank, dict[int, bytes]]] = []
    for line in console.splitlines():
        match = _PCR_LINE.search(line)
        if match is None:
            continue
        bank, pcr, value = Bank(match[1]), int(match[2]), bytes.fromhex(match[3])
        if not boots or pcr in boots[-1].get(bank, {}):
            boots.append({})
        boots[-1].setdefault(bank, {})[pcr] = value
    return boots
