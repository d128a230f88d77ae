"""file_digests against coreutils' sha*sum, on both the sequential and threaded paths."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.banks import ALL_BANKS, Bank
from builder.digest import THREADED_MIN, file_digests
from builder.run import run

TOOL = {
    Bank.SHA1: "sha1sum",
    Bank.SHA256: "sha256sum",
    Bank.SHA384: "sha384sum",
    Bank.SHA512: "sha512sum",
}


def tool_digest(bank: Bank, path: Path) -> bytes:
    return bytes.fromhex(run([TOOL[bank], str(path)], timeout=120).stdout.split()[0].decode())


@pytest.mark.parametrize(
    "size", [0, 1, 4096 * 1024 + 3, THREADED_MIN, THREADED_MIN + 4 * 1024 * 1024 + 17]
)
def test_equals_coreutils(tmp_path: Path, size: int) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(size))
    got_size, got = file_digests(path, ALL_BANKS)
    assert got_size == size
    assert set(got) == set(ALL_BANKS)
    for bank in ALL_BANKS:
        assert got[bank] == tool_digest(bank, path), bank


def test_one_bank_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(THREADED_MIN + 5))
    size, got = file_digests(path, [Bank.SHA256, Bank.SHA256])
    assert size == THREADED_MIN + 5 and list(got) == [Bank.SHA256]
    assert got[Bank.SHA256] == tool_digest(Bank.SHA256, path)


def test_a_fifo_is_read_sequentially(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 1)
    (tmp_path / "ref").write_bytes(data)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def writer() -> None:
        with open(fifo, "wb") as f:
            f.write(data)

    t = threading.Thread(target=writer)
    t.start()
    size, got = file_digests(fifo, ALL_BANKS)
    t.join(timeout=30)
    assert size == len(data)
    for bank in ALL_BANKS:
        assert got[bank] == tool_digest(bank, tmp_path / "ref")


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        file_digests(tmp_path / "nope", ALL_BANKS)


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=5000))
def test_small_files_equal_hashlib(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "small"
    path.write_bytes(data)
    assert file_digests(path, ALL_BANKS) == (len(data), {b: b.hash(data) for b in ALL_BANKS})
