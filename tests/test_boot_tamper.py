"""Tampered boots: each change to a COPY of a build output is refused with its own
message, and no volume key is released (the TPM refuses, or the initramfs stops before
asking it). Real builds, real QEMU boots, one at a time.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.boot import MARKER, BootReport, BootRequest, boot_output
from builder.pcr import Event
from builder.run import run
from tests.buildkit import FULLHASH_DEF, TWO_VOLUMES_DEF, actvsm, small_definition

pytestmark = pytest.mark.qemu

TIMEOUT = 240.0


def build(work: Path, source: Path, name: str) -> Path:
    defn = small_definition(work, source=source)
    cache = work.parent / "boot-stage-cache"  # shared with tests/test_boot.py
    actvsm("build", str(defn), "-o", str(work / "out"), "--cache-dir", str(cache), check=True)
    return work / "out" / name


@pytest.fixture(scope="module")
def small2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("small2"), TWO_VOLUMES_DEF, "small2")


@pytest.fixture(scope="module")
def fullhash(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("smallfh"), FULLHASH_DEF, "smallfh")


def copy_output(src: Path, dst: Path) -> Path:
    """A copy sharing the files' inodes; `rewrite` replaces a file before changing it."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def rewrite(path: Path, change: Callable[[bytes], bytes]) -> None:
    data = change(path.read_bytes())
    path.unlink()  # never write through a hard link into the original
    path.write_bytes(data)


def flip(offset: int) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]

    return change


def boot(out: Path, mode: str = "normal", **kw: object) -> BootReport:
    return boot_output(BootRequest(out, mode, None, timeout=TIMEOUT, **kw))  # type: ignore[arg-type]


def refused(rep: BootReport, pattern: str) -> None:
    """Failed with `pattern` in the one FAILED line, nothing unsealed, no workload."""
    assert rep.outcome == "failed", rep.console[-4000:]
    assert re.search(pattern, rep.message), rep.message
    assert len([line for line in rep.console.splitlines() if "actvsm: FAILED:" in line]) == 1
    assert " opened" not in rep.console and MARKER not in rep.console
    assert "phase capped" not in rep.console


def grub_edit(out: Path, old: str, new: str, entry: str) -> None:
    """Replace `old` by `new` inside one mode's menu entry of both GRUB configs."""
    for cfg in (out / "boot/grub").glob("grub-*.cfg"):
        text = cfg.read_text()
        start = text.index(f"--id actvsm-{entry} ")
        end = text.index("}", start)
        assert old in text[start:end]
        body = text[start:end].replace(old, new)
        cfg.unlink()
        cfg.write_text(text[:start] + body + text[end:])


def test_flipped_byte_in_the_base_is_refused_by_verity(small2: Path, tmp_path: Path) -> None:
    out = copy_output(small2, tmp_path / "o")
    # Block 0 past the 96-byte superblock: mounting reads it, so verity checks it.
    rewrite(out / "base.squashfs", flip(200))
    refused(boot(out), r"^actvsm: FAILED: (base mount|verity) \(verity")


def test_changed_kernel_is_refused_by_the_tpm(small2: Path, tmp_path: Path) -> None:
    out = copy_output(small2, tmp_path / "o")
    rewrite(out / "boot/vmlinuz", lambda d: d + b"tampered")  # still boots
    refused(boot(out), r"unseal \(volume data: the TPM refused .*PCR 17 \(sha256\) differ")


def test_changed_initramfs_is_refused_by_the_tpm(small2: Path, tmp_path: Path) -> None:
    out = copy_output(small2, tmp_path / "o")

    # Edit the init inside the archive (same length, so it still unpacks and runs);
    # tboot measures the decompressed image GRUB loads, so padding alone would not count.
    def edit(data: bytes) -> bytes:
        cpio = gzip.decompress(data)
        old = b"no key was released after this point"
        assert cpio.count(old) == 1
        return gzip.compress(cpio.replace(old, old.upper()), mtime=0)

    rewrite(out / "boot/initrd.img", edit)
    refused(boot(out), r"unseal \(volume data: the TPM refused .*PCR 19 \(sha256\) differ")


def test_changed_root_hash_on_the_command_line(small2: Path, tmp_path: Path) -> None:
    out = copy_output(small2, tmp_path / "o")
    root_hash = json.loads((out / "manifest.json").read_text())["verity"]["root_hash"]
    other = root_hash[:-1] + ("0" if root_hash[-1] != "0" else "1")
    grub_edit(out, f"actvsm.roothash={root_hash}", f"actvsm.roothash={other}", "normal")
    refused(boot(out), r"^actvsm: FAILED: (verity|base mount) \(")


def test_changed_mode_on_the_command_line(small2: Path, tmp_path: Path) -> None:
    out = copy_output(small2, tmp_path / "o")
    # The admin entry now says mode normal: a command line no policy entry lists.
    grub_edit(out, "actvsm.mode=admin", "actvsm.mode=normal", "admin")
    refused(
        boot(out, "admin"),
        r"unseal \(volume data: the TPM refused .*PCR 17 \(sha256\) differ from mode normal",
    )


def test_edited_launch_policy_is_refused_by_the_tpm(small2: Path, tmp_path: Path) -> None:
    out = copy_output(small2, tmp_path / "o")
    rewrite(out / "launch/vl.pol", flip(len((out / "launch/vl.pol").read_bytes()) - 1))
    refused(boot(out), r"unseal \(volume data: the TPM refused .*PCR 17, 18 \(sha256\) differ")


def test_tokens_swapped_between_volumes(small2: Path, tmp_path: Path) -> None:
    out = copy_output(small2, tmp_path / "o")
    data, logs = out / "volumes/data.luks", out / "volumes/logs.luks"
    tokens = {}
    for vol in (data, logs):
        rewrite(vol, lambda d: d)
        tokens[vol] = run(["cryptsetup", "token", "export", "--token-id", "0", vol]).stdout
        run(["cryptsetup", "token", "remove", "--token-id", "0", vol])
    for vol, other in ((data, logs), (logs, data)):
        run(["cryptsetup", "token", "import", "--json-file", "-", vol], input=tokens[other])
    refused(boot(out), r"unseal \(volume data: .*token is sealed for mode\(s\) admin, not normal")


def test_phase_pcr_extended_before_the_initramfs(small2: Path) -> None:
    early = Event.measuring(11, b"an earlier stage capped the phase", "attack", "PCR 11 early")
    refused(
        boot(small2, pre_extends=((0, early),)),
        r"unseal \(volume data: the TPM refused .*PCR 11 \(sha256\) differ",
    )


def test_modified_luks_header(small2: Path, tmp_path: Path) -> None:
    out = copy_output(small2, tmp_path / "o")
    vol = out / "volumes/data.luks"
    header = vol.read_bytes()[:4096]
    assert header[:6] == b"LUKS\xba\xbe"
    (hdr_size,) = struct.unpack(">Q", header[8:16])
    # One byte of the JSON metadata in both header copies (checksums then fail).
    rewrite(vol, lambda d: flip(hdr_size + 4200)(flip(4200)(d)))
    refused(boot(out), r"^actvsm: FAILED: LUKS header \(volume data: ")


def test_full_hash_boots_and_refuses_a_flipped_byte(fullhash: Path, tmp_path: Path) -> None:
    rep = boot(fullhash)
    assert rep.ok, rep.console[-4000:]
    assert "base mounted (full-hash sha256 ok)" in rep.console
    assert "ACTVSM-DATA /data read 0" in rep.console

    out = copy_output(fullhash, tmp_path / "o")
    size = (out / "base.squashfs").stat().st_size
    rewrite(out / "base.squashfs", flip(size - 10))  # a block nothing reads at boot
    refused(boot(out), r"^actvsm: FAILED: full-hash \(base image sha256 [0-9a-f]{64} is not")


def test_tboot_would_halt_on_a_module_its_policy_lacks(fullhash: Path, tmp_path: Path) -> None:
    out = copy_output(fullhash, tmp_path / "o")
    rewrite(out / "boot/vmlinuz", lambda d: d + b"tampered")
    proc = actvsm("boot", str(out), "--json")
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["outcome"] == "halt"
    assert result["message"].startswith("tboot would halt: module 0 (vmlinuz)")
    assert "qemu" not in proc.stderr.lower()  # nothing was booted
