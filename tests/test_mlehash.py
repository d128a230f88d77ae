"""MLE hash against lcp2_mlehash (tboot's own tool) on Debian's /boot/tboot.gz."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.banks import Bank
from builder.cli import main
from builder.errors import InputError
from builder.tboot.mlehash import MleImage, load_mle

TBOOT = Path("/boot/tboot.gz")
CMDLINES = [
    "",
    "logging=serial,memory,vga serial=115200,8n1,0x3f8 extpol=sha256",
    "logging=vga min_ram=0x2000000 extpol=embedded",
    "a" * 300,
]


def lcp2_mlehash(alg: str, cmdline: str | None, path: Path = TBOOT) -> str:
    args = ["lcp2_mlehash", "--create", "--alg", alg]
    if cmdline is not None:
        args += ["--cmdline", cmdline]
    out = subprocess.run([*args, str(path)], capture_output=True, timeout=60, check=True)
    return out.stdout.decode().replace(" ", "").strip()


@pytest.fixture(scope="module")
def mle() -> MleImage:
    return load_mle(TBOOT.read_bytes())


@pytest.mark.parametrize("alg", ["sha1", "sha256"])
@pytest.mark.parametrize("cmdline", CMDLINES)
def test_matches_lcp2_mlehash(mle: MleImage, alg: str, cmdline: str) -> None:
    assert mle.hash(cmdline, Bank(alg)).hex() == lcp2_mlehash(alg, cmdline)


@pytest.mark.parametrize("alg", ["sha384", "sha512"])
def test_wider_banks_and_no_cmdline(alg: str) -> None:
    m = load_mle(TBOOT.read_bytes())
    assert m.hash(None, Bank(alg)).hex() == lcp2_mlehash(alg, None)
    assert m.hash("x=1", Bank(alg)).hex() == lcp2_mlehash(alg, "x=1")


def test_uncompressed_elf_gives_same_hash(tmp_path: Path) -> None:
    elf = tmp_path / "tboot"
    elf.write_bytes(gzip.decompress(TBOOT.read_bytes()))
    assert load_mle(elf.read_bytes()).hash("q", Bank.SHA256).hex() == lcp2_mlehash(
        "sha256", "q", elf
    )


def test_longest_cmdline_fits_and_one_more_is_refused() -> None:
    m = load_mle(TBOOT.read_bytes())
    longest = "b" * m.max_cmdline
    assert m.hash(longest, Bank.SHA1).hex() == lcp2_mlehash("sha1", longest)
    with pytest.raises(InputError, match="tboot's buffer holds at most"):
        m.hash(longest + "b", Bank.SHA1)


def test_not_tboot_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not an ELF"):
        load_mle(b"hello world" * 10)
    with pytest.raises(InputError, match="not a 32-bit"):
        load_mle(Path("/bin/true").read_bytes())


def test_cli_prints_lowercase_hex(capsys: pytest.CaptureFixture[str]) -> None:
    cmd = "logging=serial"
    assert main(["mlehash", "--alg", "sha256", "--cmdline", cmd, str(TBOOT)]) == 0
    assert capsys.readouterr().out == lcp2_mlehash("sha256", cmd) + "\n"
    assert main(["mlehash", str(Path("/nonexistent"))]) == 2


@settings(max_examples=80, deadline=None)
@given(
    patch=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=12),
)
def test_corrupt_headers_are_input_errors(patch: list[tuple[int, int]]) -> None:
    """tboot's first bytes (ELF and program headers) damaged: an InputError, never a crash."""
    head = bytearray(_TBOOT_ELF[:4096])
    for off, value in patch:
        head[off] = value
    try:
        load_mle(bytes(head))
    except InputError:
        pass


_TBOOT_ELF = gzip.decompress(TBOOT.read_bytes())
