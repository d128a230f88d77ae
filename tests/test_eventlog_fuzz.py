"""Random mutations of real event logs: a valid parse or an InputError, nothing else.

About 10,400 examples in all (hypothesis, in-process). The parser's loops are bounded
by the input length, so a hang cannot happen by design; pytest-timeout still guards.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.errors import InputError
from builder.eventlog import parse, replay_log

DATA = Path(__file__).parent / "data" / "eventlogs"
LOGS = [p.read_bytes() for p in sorted(DATA.glob("*.bin"))]
FUZZ = settings(
    max_examples=2600,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fields(data: bytes) -> tuple[list[int], list[int]]:
    """Offsets of the u32 count/size fields and of the u16 algorithm ids in a log."""
    log = parse(data)
    sizes, algs = [28], []  # the header event's data size
    header_count = 32 + 16 + 4 + 4
    sizes.append(header_count)
    assert log.spec_id is not None
    for i in range(len(log.spec_id.digest_sizes)):
        algs.append(header_count + 4 + 4 * i)
        sizes.append(header_count + 4 + 4 * i + 2)  # the u16 digestSize (first half)
    for ev in log.events:
        pos = ev.offset + 8
        sizes.append(pos)
        pos += 4
        for alg in [*(b.alg_id for b in ev.digests), *ev.other_digests]:
            del alg
            algs.append(pos)
            (alg_id,) = struct.unpack_from("<H", data, pos)
            pos += 2 + log.spec_id.digest_sizes[alg_id]
        sizes.append(pos)
    return sizes, algs


FIELDS = [fields(d) for d in LOGS]


def check(data: bytes) -> None:
    try:
        replay_log(parse(data, "fuzzed.log"))
    except InputError as exc:
        assert "offset" in str(exc) or "empty" in str(exc)


@FUZZ
@given(st.data())
def test_truncation_and_byte_flips(data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(LOGS) - 1))
    buf = bytearray(LOGS[i])
    cut = data.draw(st.integers(0, len(buf)))
    del buf[cut:]
    for _ in range(data.draw(st.integers(0, 4))):
        if buf:
            pos = data.draw(st.integers(0, len(buf) - 1))
            buf[pos] = data.draw(st.integers(0, 255))
    check(bytes(buf))


@FUZZ
@given(st.data())
def test_size_field_changes(data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(LOGS) - 1))
    buf = bytearray(LOGS[i])
    sizes, _ = FIELDS[i]
    pos = data.draw(st.sampled_from(sizes))
    value = data.draw(
        st.one_of(
            st.integers(0, 2**32 - 1),
            st.integers(0, 300),
            st.sampled_from([0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, len(buf), len(buf) + 1]),
        )
    )
    struct.pack_into("<I", buf, pos, value)
    check(bytes(buf))


@FUZZ
@given(st.data())
def test_unknown_algorithm_ids(data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(LOGS) - 1))
    buf = bytearray(LOGS[i])
    _, algs = FIELDS[i]
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.sampled_from(algs))
        value = data.draw(
            st.one_of(st.integers(0, 0xFFFF), st.sampled_from([4, 0xB, 0xC, 0xD, 0x12]))
        )
        struct.pack_into("<H", buf, pos, value)
    check(bytes(buf))


@FUZZ
@given(st.data())
def test_splices_and_garbage(data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(LOGS) - 1))
    buf = bytearray(LOGS[i])
    for _ in range(data.draw(st.integers(1, 3))):
        a = data.draw(st.integers(0, len(buf)))
        b = data.draw(st.integers(a, min(len(buf), a + 64)))
        buf[a:b] = data.draw(st.binary(max_size=64))
    check(bytes(buf))


def test_fields_helper_finds_real_fields() -> None:
    """The mutation targets are real fields: zeroing a data size breaks the parse."""
    sizes, algs = FIELDS[0]
    assert len(sizes) > 10 and len(algs) > 10
    buf = bytearray(LOGS[0])
    struct.pack_into("<I", buf, sizes[-1], 2**31)
    with pytest.raises(InputError, match="truncated"):
        parse(bytes(buf))


def actvsm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder.cli", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("cut", [3, 100, 1000])
def test_cli_truncated_log_exit_2_one_line(tmp_path: Path, cut: int) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(LOGS[0][:cut])
    proc = actvsm("replay", str(bad))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    first, *rest = proc.stderr.splitlines()
    assert first.startswith(f"actvsm: error: {bad}: offset ")
    assert all(line.startswith("  hint: ") for line in rest)


def test_cli_garbage_and_missing_files_exit_2(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\xff" * 4096)
    for path in (garbage, tmp_path / "missing.bin", tmp_path):
        proc = actvsm("replay", str(path))
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stderr.startswith("actvsm: error: ")
