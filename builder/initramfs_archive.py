"""Reproducible initramfs archives: a cpio "newc" writer and helpers to fill it.

The initramfs is measured (tboot hashes it into PCR 18), so the same inputs must give
the same bytes: entries are sorted, owned by root, dated SOURCE_DATE_EPOCH (or 0), their
inode numbers are their positions, and compression has no timestamp (gzip mtime 0, or
zstd at a fixed level). Files are copied from a root tree (the base image): binaries
with their shared-library closure read from ELF headers (`builder.elfdeps`), kernel
modules with their dependencies from `modules.dep`.
"""

from __future__ import annotations

import gzip
import lzma
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath

from builder.elfdeps import ElfError, library_closure, resolve_in_root
from builder.errors import BuildError
from builder.run import require_tool, run

TRAILER = "TRAILER!!!"
NEWC_MAGIC = b"070701"


class Kind(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    CHAR = "char"
    BLOCK = "block"


_TYPE_BITS = {
    Kind.FILE: stat.S_IFREG,
    Kind.DIR: stat.S_IFDIR,
    Kind.SYMLINK: stat.S_IFLNK,
    Kind.CHAR: stat.S_IFCHR,
    Kind.BLOCK: stat.S_IFBLK,
}


class Compression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


@dataclass(frozen=True)
class Entry:
    """One archive member. `data` is a file's content or a symlink's target."""

    path: str  # relative, no leading "/"
    kind: Kind
    mode: int  # permission bits only
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


# -- the cpio newc format ---------------------------------------------------------------


def newc(entries: Iterable[Entry], *, mtime: int = 0) -> bytes:
    """The cpio "newc" archive of `entries` in path order, ending with the trailer."""
    out = bytearray()
    ordered = sorted(entries, key=lambda e: e.path)
    for ino, entry in enumerate(ordered, start=1):
        nlink = 2 if entry.kind is Kind.DIR else 1
        out += _member(
            entry.path,
            ino,
            _TYPE_BITS[entry.kind] | entry.mode,
            nlink,
            mtime,
            entry.data,
            entry.rdev,
        )
    out += _member(TRAILER, 0, 0, 1, 0, b"", (0, 0))
    return bytes(out)


def _member(
    name: str, ino: int, mode: int, nlink: int, mtime: int, data: bytes, rdev: tuple[int, int]
) -> bytes:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
    return _pad(header + encoded) + _pad(data)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def compress(data: bytes, method: Compression, *, zstd_level: int = 10) -> bytes:
    """Compressed `data`, the same bytes for the same input (no names, no timestamps)."""
    if method is Compression.NONE:
        return data
    if method is Compression.GZIP:
        return gzip.compress(data, compresslevel=9, mtime=0)
    zstd = require_tool("zstd", "compress the initramfs")
    # --no-check keeps the frame free of options the kernel's decompressor may lack.
    cmd = [zstd, f"-{zstd_level}", "-q", "-c", "--no-progress", "-T1", "--no-check"]
    return run(cmd, input=data, timeout=300).stdout


def source_date_epoch(env: Mapping[str, str] = os.environ) -> int:
    value = env.get("SOURCE_DATE_EPOCH", "0")
    try:
        return max(0, int(value))
    except ValueError:
        raise BuildError(
            f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds",
            hint="unset it or set it to an integer such as 0",
        ) from None


# -- filling an archive from a root tree ------------------------------------------------


class Archive:
    """The members of an initramfs, keyed by path; parents are created as needed."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def add(self, entry: Entry) -> None:
        path = _clean(entry.path)
        for parent in reversed(PurePosixPath(path).parents[:-1]):
            self.entries.setdefault(str(parent), Entry(str(parent), Kind.DIR, 0o755))
        existing = self.entries.get(path)
        if existing is not None and existing.kind is Kind.DIR and entry.kind is Kind.DIR:
            return
        self.entries[path] = Entry(path, entry.kind, entry.mode, entry.data, entry.rdev)

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self.add(Entry(path, Kind.DIR, mode))

    def add_bytes(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.add(Entry(path, Kind.FILE, mode, data))

    def add_symlink(self, path: str, target: str) -> None:
        self.add(Entry(path, Kind.SYMLINK, 0o777, target.encode()))

    def add_device(self, path: str, kind: Kind, major: int, minor: int, mode: int = 0o600) -> None:
        self.add(Entry(path, kind, mode, rdev=(major, minor)))

    def add_basic_devices(self) -> None:
        """dev/console and dev/null: without a console node /init prints nothing."""
        self.add_device("dev/console", Kind.CHAR, 5, 1)
        self.add_device("dev/null", Kind.CHAR, 1, 3, 0o666)

    def add_from_root(self, root: Path, path: str, dest: str | None = None) -> None:
        """Copy `path` of the root tree (symlinks followed inside it) as a regular file."""
        host = resolve_in_root(root, path)
        if host is None or not host.is_file():
            raise BuildError(f"{path} is not a file in the root tree {root}")
        mode = stat.S_IMODE(host.stat().st_mode)
        self.add_bytes(dest or path, host.read_bytes(), mode)

    def add_binary(self, root: Path, path: str) -> None:
        """A binary (or shared library) of the root tree with everything it loads."""
        try:
            closure = library_closure(root, path)
        except ElfError as exc:
            raise BuildError(f"cannot collect {path}: {exc}") from None
        for item in (path, *closure):
            self.add_from_root(root, item)

    def add_modules(self, root: Path, kver: str, names: Iterable[str]) -> list[str]:
        """Kernel modules `names` and their dependencies, decompressed to plain `.ko`,
        with a `modules.dep` for them; returns their paths in load order."""
        moddir = f"lib/modules/{kver}"
        dep_file = resolve_in_root(root, f"{moddir}/modules.dep")
        if dep_file is None:
            raise BuildError(
                f"{moddir}/modules.dep is missing in the root tree {root}",
                hint="is the kernel installed in the base (and depmod run)?",
            )
        deps = parse_modules_dep(dep_file.read_text())
        order = module_load_order(deps, names)
        for module in order:
            host = resolve_in_root(root, f"{moddir}/{module}")
            if host is None:
                raise BuildError(f"{moddir}/{module} is listed in modules.dep but missing")
            self.add_bytes(f"{moddir}/{plain_ko(module)}", decompress_module(module, host), 0o644)
        dep_lines = [
            f"{plain_ko(m)}:" + "".join(f" {plain_ko(d)}" for d in deps[m]) + "\n" for m in order
        ]
        self.add_bytes(f"{moddir}/modules.dep", "".join(sorted(dep_lines)).encode())
        return [f"/{moddir}/{plain_ko(m)}" for m in order]

    def build(
        self, compression: Compression = Compression.GZIP, *, mtime: int | None = None
    ) -> bytes:
        stamp = source_date_epoch() if mtime is None else mtime
        return compress(newc(self.entries.values(), mtime=stamp), compression)

    def write(self, out: Path, compression: Compression = Compression.GZIP) -> None:
        """Write the archive atomically (a reader never sees half an initramfs)."""
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(self.build(compression))
        tmp.replace(out)


def _clean(path: str) -> str:
    clean = str(PurePosixPath("/", path)).lstrip("/")
    if not clean or ".." in PurePosixPath(clean).parts:
        raise BuildError(f"bad initramfs path {path!r}")
    return clean


# -- kernel modules ----------------------------------------------------------------------


def module_name(path: str) -> str:
    """`kernel/drivers/block/virtio_blk.ko.xz` -> `virtio_blk` (dashes as underscores)."""
    base = PurePosixPath(path).name
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def plain_ko(path: str) -> str:
    name = PurePosixPath(path)
    return str(name.parent / (name.name.split(".ko")[0] + ".ko"))


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """modules.dep: `module path: dependency paths...`, one module a line."""
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        module, _, rest = line.partition(":")
        deps[module.strip()] = rest.split()
    return deps


def module_load_order(deps: Mapping[str, list[str]], names: Iterable[str]) -> list[str]:
    """Module paths for `names` and everything they depend on, dependencies first."""
    by_name = {module_name(path): path for path in deps}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(path: str) -> None:
        if path in order or path in visiting:
            return
        visiting.add(path)
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in names:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            raise BuildError(
                f"kernel module {name!r} is not in modules.dep",
                hint="check the name (modinfo NAME) or whether it is built in",
            )
        visit(path)
    return order


def decompress_module(path: str, host: Path) -> bytes:
    data = host.read_bytes()
    if path.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.endswith(".ko.zst"):
        zstd = require_tool("zstd", "decompress kernel modules")
        return run([zstd, "-d", "-q", "-c"], input=data, timeout=60).stdout
    return data
