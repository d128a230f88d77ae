"""Reading the guest's console: PCR lines and files sent base64-encoded."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from builder.banks import Bank
from builder.errors import BuildError
from builder.rig.console import (
    extract_file,
    parse_pcrs,
    print_pcrs_script,
    send_file_script,
)


def run_guest_shell(script: str, tmp_path: Path) -> str:
    """Run a guest snippet with the real busybox sh, as /init would."""
    return subprocess.run(
        ["busybox", "sh", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        cwd=tmp_path,
    ).stdout


def test_file_round_trip_through_busybox(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 40
    (tmp_path / "log.bin").write_bytes(blob)
    out = run_guest_shell(send_file_script(str(tmp_path / "log.bin"), "eventlog"), tmp_path)
    noisy = out.replace("\n", "\r\n", 3) + "[   12.3] kernel says hi\n"
    assert extract_file(noisy, "eventlog") == blob


@given(st.binary(max_size=3000), st.binary(max_size=100))
def test_the_right_occurrence_is_decoded(first: bytes, second: bytes) -> None:
    def sent(data: bytes) -> str:
        text = base64.encodebytes(data).decode()
        return f"ACTVSM-BEGIN log\n{text}ACTVSM-END log\n"

    console = "boot 1\n" + sent(first) + "[ 1.0] reboot\n" + sent(second)
    assert extract_file(console, "log") == first
    assert extract_file(console, "log", occurrence=1) == second


def test_missing_or_cut_files_are_errors() -> None:
    with pytest.raises(BuildError, match="no 'eventlog' file"):
        extract_file("nothing here\n", "eventlog")
    with pytest.raises(BuildError, match="cut off"):
        extract_file("ACTVSM-BEGIN eventlog\nAAAA\n", "eventlog")


def test_pcr_lines_from_sysfs_shaped_files(tmp_path: Path) -> None:
    values = {Bank.SHA1: {17: "AB" * 20}, Bank.SHA256: {17: "CD" * 32}}
    script = print_pcrs_script([17], [Bank.SHA1, Bank.SHA256]).replace(
        "/sys/class/tpm/tpm0", str(tmp_path)
    )
    for bank, pcrs in values.items():
        (tmp_path / f"pcr-{bank.value}").mkdir()
        for pcr, value in pcrs.items():
            (tmp_path / f"pcr-{bank.value}" / str(pcr)).write_text(value + "\n")
    out = run_guest_shell(script, tmp_path)
    boots = parse_pcrs(out + out)  # printed again after a reboot
    expected = {b: {p: bytes.fromhex(v) for p, v in pcrs.items()} for b, pcrs in values.items()}
    assert boots == [expected, expected]
