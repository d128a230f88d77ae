"""`actvsm flash` against real block devices: loop devices (attached with losetup, one
mounted, one with a partition added through BLKPG by `addpart`), the host's root disk,
regular files; and a corrupted write caught by the read-back."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from builder import flash
from builder.flash import SystemState, Target

MiB = 1 << 20


def actvsm(*args: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "builder.cli", *map(str, args)],
        input=stdin,
        capture_output=True,
        timeout=300,
    )


def sh(*cmd: str | Path) -> str:
    return subprocess.run(
        [os.fspath(c) for c in cmd], capture_output=True, timeout=60, check=True
    ).stdout.decode()


@contextmanager
def loop_device(backing: Path, *, read_only: bool = False) -> Iterator[Path]:
    """A loop device over `backing`, detached afterwards. Read-only means `losetup -r`,
    whose flag the next attach resets; `blockdev --setro` would outlive the detach and
    leave the device read-only for whoever uses it next (seen here)."""
    dev = Path(sh("losetup", *(["-r"] if read_only else []), "-f", "--show", backing).strip())
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", str(dev)], timeout=60, check=False)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A 6 MiB 'disk image' of pseudo-random bytes, its .zst and both .sha256 files."""
    img = tmp_path / "installer.img"
    img.write_bytes(b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(196608)))
    sh("zstd", "-q", "-9", "-T1", img, "-o", tmp_path / "installer.img.zst")
    for p in (img, tmp_path / "installer.img.zst"):
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        p.with_name(p.name + ".sha256").write_text(f"{digest}  {p.name}\n")
    return img


def blank(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def refused(proc: subprocess.CompletedProcess[bytes], words: str) -> None:
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert words in err, err


# -- refusals ------------------------------------------------------------------------------


def test_refuses_a_mounted_device(image: Path, tmp_path: Path) -> None:
    backing = blank(tmp_path / "fs.img", 16 * MiB)
    sh("mke2fs", "-q", "-F", "-t", "ext2", backing)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with loop_device(backing) as dev:
        sh("mount", dev, mnt)
        try:
            proc = actvsm("flash", "--allow-file", "--yes", image, dev)
            # The file behind the mounted loop device is refused too.
            via_file = actvsm("flash", "--allow-file", "--yes", image, backing)
        finally:
            sh("umount", mnt)
    refused(proc, "is mounted")
    assert str(mnt) in proc.stderr.decode()
    refused(via_file, "is mounted")
    assert b"hint: unmount" in proc.stderr


def test_refuses_a_partition(image: Path, tmp_path: Path) -> None:
    backing = blank(tmp_path / "disk.img", 16 * MiB)
    with loop_device(backing) as dev:
        sh("addpart", dev, "1", "2048", "16384")
        part = Path(f"{dev}p1")
        try:
            target = flash.examine(part)
            proc = actvsm("flash", "--allow-file", "--yes", image, part)
        finally:
            sh("delpart", dev, "1")
    assert target.kind == "partition" and target.parent == dev.name
    refused(proc, f"is a partition of {dev}, not a whole disk")
    assert f"give the whole disk {dev}" in proc.stderr.decode()


def test_refuses_a_device_smaller_than_the_image(image: Path, tmp_path: Path) -> None:
    backing = blank(tmp_path / "small.img", 2 * MiB)
    with loop_device(backing) as dev:
        proc = actvsm("flash", "--allow-file", "--yes", image.with_suffix(".img.zst"), dev)
    refused(proc, f"has {2 * MiB} bytes, the image needs {6 * MiB}")
    assert backing.read_bytes() == bytes(2 * MiB)


def test_refuses_the_hosts_root_disk(image: Path) -> None:
    root_dev = os.stat("/").st_dev
    disks = flash.whole_disks((os.major(root_dev), os.minor(root_dev)))
    state = flash.system_state()
    assert disks and all(d in state.system for d in disks)
    node = flash.sysfs_dir(sorted(disks)[0])
    assert node is not None
    dev = Path("/dev") / node.name
    for extra in ((), ("--allow-file",)):
        proc = actvsm("flash", *extra, "--yes", image, dev)
        refused(proc, "neither removable nor on USB")
    # Were it removable, it would still be refused as the running system's disk.
    target = flash.examine(dev)
    as_stick = Target(**{**target.__dict__, "removable": True})
    reason = flash.refusal(as_stick, image_size=1, allow_file=False, state=state)
    assert reason is not None and "holds the running system (/ is on it)" in reason[0]


def test_refuses_without_confirmation(image: Path, tmp_path: Path) -> None:
    target = blank(tmp_path / "stick.img", 8 * MiB)
    for answer in (b"no\n", b"", b"loop0\n"):
        proc = actvsm("flash", "--allow-file", image, target, stdin=answer)
        refused(proc, "not confirmed")
        assert b"EVERYTHING on" in proc.stderr
    assert target.read_bytes() == bytes(8 * MiB)


def test_refuses_files_and_loops_without_the_flag(image: Path, tmp_path: Path) -> None:
    target = blank(tmp_path / "stick.img", 8 * MiB)
    refused(actvsm("flash", "--yes", image, target), "is a regular file, not a disk")
    with loop_device(target) as dev:
        refused(actvsm("flash", "--yes", image, dev), "is a loop device")
    refused(actvsm("flash", "--yes", image, "/dev/null"), "neither a block device")
    assert target.read_bytes() == bytes(8 * MiB)


def test_refuses_an_image_that_does_not_match_its_checksum(image: Path, tmp_path: Path) -> None:
    target = blank(tmp_path / "stick.img", 8 * MiB)
    data = bytearray(image.read_bytes())
    data[12345] ^= 1
    image.write_bytes(bytes(data))
    proc = actvsm("flash", "--allow-file", "--yes", image, target)
    refused(proc, "does not match installer.img.sha256")
    assert target.read_bytes() == bytes(8 * MiB)


# -- writing and verifying ---------------------------------------------------------------


def test_flashes_the_compressed_image_to_a_loop_device(image: Path, tmp_path: Path) -> None:
    backing = blank(tmp_path / "stick.img", 8 * MiB)
    with open(backing, "r+b") as f:
        f.write(b"\xff" * (8 * MiB))  # old content beyond and under the image
    with loop_device(backing) as dev:
        proc = actvsm(
            "flash", "--allow-file", "--json", image.with_suffix(".img.zst"), dev, stdin=b"yes\n"
        )
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    want = hashlib.sha256(image.read_bytes()).hexdigest()
    assert result["sha256"] == want and result["verified"] and result["bytes"] == 6 * MiB
    data = backing.read_bytes()
    assert data[: 6 * MiB] == image.read_bytes()
    assert data[6 * MiB :] == b"\xff" * (2 * MiB)
    assert b"(100%)" in proc.stderr and b"MiB/s" in proc.stderr


def test_confirming_with_the_device_name_writes_a_file(image: Path, tmp_path: Path) -> None:
    target = blank(tmp_path / "stick.img", 8 * MiB)
    proc = actvsm("flash", "--allow-file", image, target, stdin=b"stick.img\n")
    assert proc.returncode == 0, proc.stderr.decode()
    assert target.read_bytes()[: 6 * MiB] == image.read_bytes()
    assert actvsm("flash", "--verify-only", "--allow-file", image, target).returncode == 0


def test_a_corrupted_write_is_caught_by_the_read_back(image: Path, tmp_path: Path) -> None:
    backing = blank(tmp_path / "stick.img", 8 * MiB)

    def corrupt() -> None:  # as a faulty stick would: one bit flipped after the write
        with open(backing, "r+b") as f:
            f.seek(3 * MiB + 17)
            byte = f.read(1)
            f.seek(3 * MiB + 17)
            f.write(bytes([byte[0] ^ 0x10]))
            f.flush()
            os.fsync(f.fileno())

    with loop_device(backing) as dev:
        img = flash.open_image(image)
        with pytest.raises(flash.VerifyFailed) as caught:
            flash.flash(img, flash.examine(dev), quiet=True, after_write=corrupt)
        assert caught.value.exit_status == 4
        # The CLI's read-back-only mode reports the same damage with exit status 4.
        proc = actvsm("flash", "--verify-only", "--allow-file", "--json", image, dev)
    assert proc.returncode == 4, proc.stderr.decode()
    assert "does not hold the image" in json.loads(proc.stdout)["error"]


def test_a_failed_write_exits_3(image: Path, tmp_path: Path) -> None:
    backing = blank(tmp_path / "stick.img", 8 * MiB)
    with loop_device(backing, read_only=True) as dev:  # as a write-protected stick
        proc = actvsm("flash", "--allow-file", "--yes", image, dev)
        assert (Path("/sys/block") / dev.name / "ro").read_text().strip() == "1"
    assert proc.returncode == 3, proc.stderr.decode()
    assert f"writing {dev} failed at byte 0".encode() in proc.stderr
    assert backing.read_bytes() == bytes(8 * MiB)


# -- the pure parts ------------------------------------------------------------------------


@given(st.integers(0, (1 << 64) - 1))
def test_zstd_header_sizes_round_trip(size: int) -> None:
    # Headers written by real zstd are checked in test_zstd_header_from_the_tool; here
    # every Frame_Content_Size width that can hold `size` parses back to it.
    for flag, width in ((1, 2), (2, 4), (3, 8)):
        if flag == 1 and not 256 <= size < 65536 + 256:
            continue
        if flag == 2 and size >= 1 << 32:
            continue
        raw = size - 256 if flag == 1 else size
        header = flash.ZSTD_MAGIC + bytes([flag << 6 | 0x20]) + raw.to_bytes(width, "little")
        assert flash.zstd_content_size(header) == size


def test_zstd_header_from_the_tool(tmp_path: Path) -> None:
    for size in (1, 200, 300, 70_000, 5 * MiB):
        src = tmp_path / "x"
        src.write_bytes(os.urandom(size))
        sh("zstd", "-q", "-f", "-3", src, "-o", tmp_path / "x.zst")
        head = (tmp_path / "x.zst").read_bytes()[:18]
        assert flash.zstd_content_size(head) == size
        streamed = subprocess.run(
            ["zstd", "-q", "-c"], input=src.read_bytes(), capture_output=True, check=True
        ).stdout
        assert flash.zstd_content_size(streamed[:18]) is None  # size unknown from a pipe


def test_mountinfo_parsing() -> None:
    text = (
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        "22 27 0:21 / /proc rw - proc proc rw\n"
        "90 27 7:3 / /mnt/with\\040space rw - ext2 /dev/loop3 rw\n"
    )
    assert flash.parse_mountinfo(text) == {(254, 0): "/", (7, 3): "/mnt/with space"}
    real = flash.parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    st_root = os.stat("/").st_dev
    assert real[(os.major(st_root), os.minor(st_root))] == "/"


def test_refusal_order_and_acceptance() -> None:
    stick = Target(
        Path("/dev/sdz"),
        "disk",
        "sdz",
        64 * MiB,
        (8, 0),
        usb=True,
        members=frozenset({(8, 0), (8, 1)}),
    )
    empty = SystemState()
    assert flash.refusal(stick, image_size=64 * MiB, allow_file=False, state=empty) is None
    busy = SystemState(mounted={(8, 1): "/media/x"})
    reason = flash.refusal(stick, image_size=1, allow_file=False, state=busy)
    assert reason is not None and "/media/x" in reason[0]
    internal = Target(Path("/dev/sdz"), "disk", "sdz", 64 * MiB, (8, 0))
    reason = flash.refusal(internal, image_size=1, allow_file=True, state=empty)
    assert reason is not None and "neither removable nor on USB" in reason[0]
