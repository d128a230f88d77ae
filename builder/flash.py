"""Writing the installer image to a USB stick, safely.

Before anything is written the target is examined (sysfs, /proc/self/mountinfo,
/proc/swaps) and refused unless it is a whole disk that is removable or on USB, holds
no part of the running system, has nothing mounted and is large enough. A regular file
or a loop device is accepted only with an explicit `allow_file` (tests). `refusal()`
is the pure decision over what was read; `examine()` reads it.

The image (raw, or zstd-compressed, decompressed on the fly) is hashed while written,
the target is synced and its cache dropped (BLKFLSBUF), then read back and compared
with that digest. Exit statuses: 2 refused or bad input, 3 write failed, 4 read-back
differs, 1 anything else.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from builder.digest import file_sha256
from builder.errors import ActvsmError, InputError
from builder.run import require_tool

EXIT_REFUSED = 2
EXIT_WRITE_FAILED = 3
EXIT_VERIFY_FAILED = 4

LOOP_MAJOR = 7
BLKFLSBUF = 0x1261  # linux/fs.h: flush the block device's buffer cache
BLKGETSIZE64 = 0x80081272
CHUNK = 4 << 20
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

DevNo = tuple[int, int]


class WriteFailed(ActvsmError):
    """Writing or syncing the target failed: the stick holds a partial image."""

    exit_status = EXIT_WRITE_FAILED


class VerifyFailed(ActvsmError):
    """The target's bytes read back differ from the image."""

    exit_status = EXIT_VERIFY_FAILED


# -- what the target is ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A flash target as the kernel sees it. `kind`: disk, partition, loop, file or other."""

    path: Path
    kind: str
    name: str
    size: int
    devno: DevNo | None = None
    parent: str | None = None  # the whole disk of a partition
    removable: bool = False
    usb: bool = False
    members: frozenset[DevNo] = frozenset()  # the device, its partitions and holders
    backing_loops: frozenset[DevNo] = frozenset()  # loop devices over a target file


@dataclass(frozen=True)
class SystemState:
    """Devices in use: everything mounted, and the disks under /, /boot and swap."""

    mounted: dict[DevNo, str] = field(default_factory=dict)  # devno -> mount point
    system: dict[DevNo, str] = field(default_factory=dict)  # devno -> why


def refusal(
    target: Target, *, image_size: int, allow_file: bool, state: SystemState
) -> tuple[str, str] | None:
    """Why writing the image to `target` must not happen (message, hint), or None."""
    shown = str(target.path)
    if target.kind == "other":
        return f"{shown} is neither a block device nor a regular file", "give a whole disk"
    if target.kind == "file" and not allow_file:
        return (
            f"{shown} is a regular file, not a disk",
            "give the USB stick's whole disk, e.g. /dev/sdb (--allow-file writes files)",
        )
    if target.kind == "partition":
        return (
            f"{shown} is a partition of /dev/{target.parent}, not a whole disk",
            f"give the whole disk /dev/{target.parent} (after checking it is the stick)",
        )
    if target.kind == "loop" and not allow_file:
        return f"{shown} is a loop device", "pass --allow-file to write to loop devices (tests)"
    if target.kind == "disk" and not (target.removable or target.usb):
        return (
            f"{shown} is neither removable nor on USB: it looks like an internal disk",
            "flash only USB sticks or removable media; check `lsblk -o NAME,RM,TRAN,SIZE`",
        )
    for devno in sorted(target.members | target.backing_loops):
        if devno in state.system:
            return (
                f"{shown} holds the running system ({state.system[devno]})",
                "pick another device",
            )
    for devno in sorted(target.members | target.backing_loops):
        if devno in state.mounted:
            return (
                f"{shown} is mounted (device {devno[0]}:{devno[1]} on {state.mounted[devno]})",
                "unmount every partition of it first (umount), then retry",
            )
    if target.size < image_size:
        return (
            f"{shown} has {target.size} bytes, the image needs {image_size}",
            "use a larger stick",
        )
    return None


# -- reading sysfs and /proc -------------------------------------------------------------


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def _devno(text: str) -> DevNo | None:
    major, _, minor = text.partition(":")
    if not (major.isdigit() and minor.isdigit()):
        return None
    return int(major), int(minor)


def sysfs_dir(devno: DevNo, sys_root: Path = Path("/sys")) -> Path | None:
    link = sys_root / "dev" / "block" / f"{devno[0]}:{devno[1]}"
    return link.resolve() if link.exists() else None


def whole_disks(devno: DevNo, sys_root: Path = Path("/sys")) -> set[DevNo]:
    """The whole disks under a device: a partition's disk, a dm/md device's slaves' disks."""
    node = sysfs_dir(devno, sys_root)
    if node is None:
        return {devno}
    if (node / "partition").exists():
        parent = _devno(_read(node.parent / "dev"))
        return {parent} if parent else {devno}
    slaves = sorted((node / "slaves").glob("*")) if (node / "slaves").is_dir() else []
    out: set[DevNo] = set()
    for slave in slaves:
        sub = _devno(_read(slave / "dev"))
        if sub is not None:
            out |= whole_disks(sub, sys_root)
    return out or {devno}


def _members(disk_dir: Path) -> set[DevNo]:
    """A disk, its partitions and whatever holds any of them (dm, md), by device number."""
    found: set[DevNo] = set()
    todo = [disk_dir]
    todo += [p.parent for p in disk_dir.glob("*/partition")]
    seen: set[Path] = set()
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        devno = _devno(_read(node / "dev"))
        if devno is not None:
            found.add(devno)
        if (node / "holders").is_dir():
            todo += [h.resolve() for h in (node / "holders").iterdir()]
    return found


def parse_mountinfo(text: str) -> dict[DevNo, str]:
    """device number -> mount point, from /proc/self/mountinfo."""
    out: dict[DevNo, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        devno = _devno(fields[2])
        if devno is not None and devno[0] != 0:  # major 0: tmpfs, proc, ...
            out.setdefault(devno, fields[4].replace("\\040", " "))
    return out


def system_state(proc_root: Path = Path("/proc"), sys_root: Path = Path("/sys")) -> SystemState:
    mountinfo = _read(proc_root / "self" / "mountinfo")
    mounted = parse_mountinfo(mountinfo)
    system: dict[DevNo, str] = {}
    for devno, point in mounted.items():
        if point in ("/", "/boot", "/boot/efi", "/usr"):
            for disk in whole_disks(devno, sys_root):
                system.setdefault(disk, f"{point} is on it")
    for line in _read(proc_root / "swaps").splitlines()[1:]:
        name = line.split()[0] if line.split() else ""
        try:
            st = os.stat(name)
        except OSError:
            continue
        dev = st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
        for disk in whole_disks((os.major(dev), os.minor(dev)), sys_root):
            system.setdefault(disk, f"swap {name} is on it")
    # A disk is in use when any of its partitions or holders is.
    for devno in list(system):
        node = sysfs_dir(devno, sys_root)
        if node is not None:
            for member in _members(node):
                system.setdefault(member, system[devno])
    return SystemState(mounted, system)


def _loops_backed_by(path: Path, sys_root: Path) -> frozenset[DevNo]:
    out: set[DevNo] = set()
    real = str(path.resolve())
    for backing in (sys_root / "block").glob("loop*/loop/backing_file"):
        if _read(backing).removesuffix(" (deleted)") == real:
            out |= _members(backing.parent.parent.resolve())
    return frozenset(out)


def examine(path: Path, sys_root: Path = Path("/sys")) -> Target:
    """Read what `path` is: a disk, a partition, a loop device, a regular file..."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f"cannot open the target {path}: {exc.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        return Target(
            path, "file", path.name, st.st_size, backing_loops=_loops_backed_by(path, sys_root)
        )
    if not stat.S_ISBLK(st.st_mode):
        return Target(path, "other", path.name, 0)
    devno = (os.major(st.st_rdev), os.minor(st.st_rdev))
    node = sysfs_dir(devno, sys_root)
    if node is None:
        raise InputError(f"{path} ({devno[0]}:{devno[1]}) is not known to sysfs")
    size = int(_read(node / "size", "0") or 0) * 512
    if (node / "partition").exists():
        return Target(path, "partition", node.name, size, devno, parent=node.parent.name)
    kind = "loop" if devno[0] == LOOP_MAJOR or node.name.startswith("loop") else "disk"
    return Target(
        path,
        kind,
        node.name,
        size,
        devno,
        removable=_read(node / "removable") == "1",
        usb="/usb" in str(node),
        members=frozenset(_members(node)),
    )


# -- the image ---------------------------------------------------------------------------


def zstd_content_size(header: bytes) -> int | None:
    """Frame_Content_Size from a zstd frame header (RFC 8878, 3.1.1.1), None if absent."""
    if len(header) < 6 or header[:4] != ZSTD_MAGIC:
        return None
    fhd = header[4]
    fcs_flag, single, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if size == 0 or len(header) < pos + size:
        return None
    value = int.from_bytes(header[pos : pos + size], "little")
    return value + 256 if size == 2 else value


@dataclass(frozen=True)
class Image:
    path: Path
    compressed: bool
    size: int  # bytes written to the target


def open_image(path: Path, *, check_sidecar: bool = True) -> Image:
    """What will be written; checks `path`.sha256 (sha256sum format) when present."""
    if not path.is_file():
        raise InputError(f"image {path} is not a file", hint="give installer.img or .img.zst")
    with open(path, "rb") as f:
        header = f.read(18)
    compressed = header[:4] == ZSTD_MAGIC
    if compressed:
        size = zstd_content_size(header)
        if size is None:
            raise InputError(
                f"{path}: the zstd frame does not record its size",
                hint="decompress it first (zstd -d) and flash the .img",
            )
    else:
        size = path.stat().st_size
    if size == 0:
        raise InputError(f"image {path} is empty")
    side = path.with_name(path.name + ".sha256")
    if check_sidecar and side.is_file():
        words = _read(side).split()
        if not words or len(words[0]) != 64:
            raise InputError(f"{side}: not in sha256sum format", hint="regenerate it")
        actual = file_sha256(path).hex()
        if actual != words[0].lower():
            raise InputError(
                f"{path} does not match {side.name}: sha256 {actual}, expected {words[0]}",
                hint="the file is damaged or incomplete: copy or download it again",
            )
    return Image(path, compressed, size)


@contextmanager
def image_chunks(image: Image) -> Iterator[Iterator[bytes]]:
    """The image's bytes in chunks, decompressed by `zstd -dc` for a .zst."""
    if not image.compressed:
        with open(image.path, "rb") as f:
            yield iter(lambda: f.read(CHUNK), b"")
        return
    zstd = require_tool("zstd", "decompress the image")
    proc = subprocess.Popen(
        [zstd, "-dc", "-q", "--", os.fspath(image.path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out: IO[bytes] = proc.stdout
    try:
        yield _read_full(out)
    finally:
        out.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
    if proc.returncode != 0:
        raise InputError(f"{image.path}: zstd could not decompress it: {err}")


def _read_full(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(CHUNK):
        yield chunk


# -- writing and reading back -----------------------------------------------------------


class Progress:
    """`written / total (pct) rate` on stderr: in place on a terminal, else every 10%."""

    def __init__(self, total: int, label: str, *, quiet: bool = False) -> None:
        self.total, self.label, self.quiet = total, label, quiet
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.last_shown = -1.0
        self.last_decile = -1

    def update(self, done: int, *, final: bool = False) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        decile = done * 10 // max(self.total, 1)
        if self.tty and not final and now - self.last_shown < 0.5:
            return
        if not self.tty and not final and decile == self.last_decile:
            return
        self.last_shown, self.last_decile = now, decile
        rate = done / max(now - self.start, 1e-6) / (1 << 20)
        line = (
            f"{self.label}: {done / (1 << 20):.1f} MiB / {self.total / (1 << 20):.1f} MiB "
            f"({done * 100 // max(self.total, 1)}%) {rate:.1f} MiB/s"
        )
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


@dataclass(frozen=True)
class FlashResult:
    image: Path
    device: Path
    bytes: int
    sha256: str
    verified: bool
    seconds: float
    wrote: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "image": str(self.image),
            "device": str(self.device),
            "bytes": self.bytes,
            "sha256": self.sha256,
            "verified": self.verified,
            "wrote": self.wrote,
        }


def _open_target(target: Target, flags: int) -> int:
    if target.kind in ("disk", "loop"):
        flags |= os.O_EXCL  # the kernel refuses an exclusive open of a device in use
    try:
        return os.open(target.path, flags)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise InputError(
                f"{target.path} is in use (mounted, or held by another program)",
                hint="unmount it and close whatever uses it",
            ) from None
        raise WriteFailed(f"cannot open {target.path} for writing: {exc.strerror}") from None


def write_image(image: Image, target: Target, *, progress: Progress) -> str:
    """Write the image from offset 0, sync it and drop the target's cache; its sha256."""
    h = hashlib.sha256()
    written = 0
    fd = _open_target(target, os.O_WRONLY)
    try:
        with image_chunks(image) as stream:
            for chunk in stream:
                h.update(chunk)
                view = memoryview(chunk)
                while view:
                    try:
                        n = os.write(fd, view)
                    except OSError as exc:
                        raise WriteFailed(
                            f"writing {target.path} failed at byte {written}: {exc.strerror}",
                            hint="the stick may be faulty or was removed; retry with another",
                        ) from None
                    view = view[n:]
                    written += n
                progress.update(written)
        if written != image.size:
            raise InputError(
                f"{image.path} gave {written} bytes, its header says {image.size}",
                hint="the image is damaged: copy or download it again",
            )
        try:
            os.fsync(fd)
            if target.kind in ("disk", "loop"):
                fcntl.ioctl(fd, BLKFLSBUF, 0)
            else:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            raise WriteFailed(f"syncing {target.path} failed: {exc.strerror}") from None
    finally:
        os.close(fd)
    progress.update(written, final=True)
    return h.hexdigest()


def read_back(target: Target, size: int, *, progress: Progress) -> str:
    """sha256 of the target's first `size` bytes, bypassing the page cache where possible."""
    h = hashlib.sha256()
    direct = getattr(os, "O_DIRECT", 0) if target.kind in ("disk", "loop") else 0
    try:
        fd = os.open(target.path, os.O_RDONLY | direct)
    except OSError:
        fd = os.open(target.path, os.O_RDONLY)
        direct = 0
    buf = mmap.mmap(-1, CHUNK)  # page-aligned, as O_DIRECT wants
    done = 0
    try:
        while done < size:
            try:
                n = os.readv(fd, [buf])
            except OSError as exc:
                raise VerifyFailed(
                    f"reading {target.path} back failed at byte {done}: {exc.strerror}"
                ) from None
            if n == 0:
                raise VerifyFailed(f"{target.path} ended after {done} of {size} bytes")
            take = min(n, size - done)
            h.update(buf[:take])
            done += take
            progress.update(done)
    finally:
        buf.close()
        os.close(fd)
    progress.update(done, final=True)
    return h.hexdigest()


def flash(
    image: Image,
    target: Target,
    *,
    verify_only: bool = False,
    quiet: bool = False,
    after_write: Callable[[], None] | None = None,
) -> FlashResult:
    """Write (unless `verify_only`) and verify. `after_write` runs between the two (tests
    use it to damage the target and see the read-back catch it)."""
    start = time.monotonic()
    if verify_only:
        with image_chunks(image) as stream:
            h = hashlib.sha256()
            for chunk in stream:
                h.update(chunk)
        expected = h.hexdigest()
    else:
        expected = write_image(image, target, progress=Progress(image.size, "write", quiet=quiet))
    if after_write is not None:
        after_write()
    actual = read_back(target, image.size, progress=Progress(image.size, "verify", quiet=quiet))
    if actual != expected:
        raise VerifyFailed(
            f"{target.path} does not hold the image: read back sha256 {actual}, written {expected}",
            hint="the stick is faulty or was changed; flash again or use another stick",
        )
    return FlashResult(
        image.path,
        target.path,
        image.size,
        expected,
        True,
        time.monotonic() - start,
        not verify_only,
    )
