"""Which shared libraries an ELF file needs, read from its headers (no `ldd`).

`ldd` runs the binary's loader on the host, which is wrong for a root tree built for a
target and unsafe for untrusted files. This reads PT_INTERP and the DT_NEEDED, DT_RPATH
and DT_RUNPATH entries of the dynamic section directly; `library_closure` resolves them
inside a root tree the way the loader would without an ld.so.cache.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 0, 1, 5, 15, 29

# Where glibc's loader looks when there is no cache (Debian multiarch, x86-64).
DEFAULT_LIB_DIRS = (
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "usr/lib64",
    "lib",
    "usr/lib",
)


class ElfError(ValueError):
    """Not an ELF file this module can read."""


@dataclass(frozen=True)
class ElfDeps:
    interpreter: str | None
    needed: tuple[str, ...]
    search_path: tuple[str, ...]  # DT_RUNPATH, or DT_RPATH if there is no RUNPATH


def is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def elf_deps(data: bytes) -> ElfDeps:
    """The loader, needed libraries and search path recorded in an ELF image."""
    if not is_elf(data) or len(data) < 64:
        raise ElfError("not an ELF file")
    wide = {1: False, 2: True}.get(data[4])
    endian = {1: "<", 2: ">"}.get(data[5])
    if wide is None or endian is None:
        raise ElfError("unknown ELF class or byte order")
    if wide:
        phoff, phentsize, phnum = (
            _unpack(data, endian + "Q", 32)[0],
            *_unpack(data, endian + "HH", 54),
        )
        ph_format = endian + "IIQQQQQQ"  # type, flags, offset, vaddr, paddr, filesz, memsz, align
        dyn_format = endian + "qQ"
    else:
        phoff, phentsize, phnum = (
            _unpack(data, endian + "I", 28)[0],
            *_unpack(data, endian + "HH", 42),
        )
        ph_format = endian + "IIIIIIII"  # type, offset, vaddr, paddr, filesz, memsz, flags, align
        dyn_format = endian + "iI"
    segments = [_segment(data, ph_format, phoff + i * phentsize, wide) for i in range(phnum)]
    interp = next((s for s in segments if s.type == PT_INTERP), None)
    dynamic = next((s for s in segments if s.type == PT_DYNAMIC), None)
    interpreter = _cstring(data, interp.offset) if interp else None
    if dynamic is None:
        return ElfDeps(interpreter, (), ())
    entries = _dynamic_entries(data, dyn_format, dynamic)
    strtab = next((v for t, v in entries if t == DT_STRTAB), None)
    if strtab is None:
        raise ElfError("dynamic section without a string table")
    base = _file_offset(segments, strtab)
    needed = tuple(_cstring(data, base + v) for t, v in entries if t == DT_NEEDED)
    runpath = [_cstring(data, base + v) for t, v in entries if t == DT_RUNPATH]
    rpath = [_cstring(data, base + v) for t, v in entries if t == DT_RPATH]
    paths = ":".join(runpath or rpath)
    return ElfDeps(interpreter, needed, tuple(p for p in paths.split(":") if p))


@dataclass(frozen=True)
class _Segment:
    type: int
    offset: int
    vaddr: int
    filesz: int


def _segment(data: bytes, fmt: str, at: int, wide: bool) -> _Segment:
    f = _unpack(data, fmt, at)
    if wide:
        return _Segment(f[0], f[2], f[3], f[5])
    return _Segment(f[0], f[1], f[2], f[4])


def _dynamic_entries(data: bytes, fmt: str, dynamic: _Segment) -> list[tuple[int, int]]:
    size = struct.calcsize(fmt)
    entries = []
    for at in range(dynamic.offset, dynamic.offset + dynamic.filesz - size + 1, size):
        tag, value = _unpack(data, fmt, at)
        if tag == DT_NULL:
            break
        entries.append((int(tag), int(value)))
    return entries


def _file_offset(segments: list[_Segment], vaddr: int) -> int:
    for s in segments:
        if s.type == PT_LOAD and s.vaddr <= vaddr < s.vaddr + s.filesz:
            return vaddr - s.vaddr + s.offset
    raise ElfError(f"address {vaddr:#x} is in no loaded segment")


def _unpack(data: bytes, fmt: str, at: int) -> tuple[int, ...]:
    try:
        return struct.unpack_from(fmt, data, at)
    except struct.error:
        raise ElfError("truncated ELF file") from None


def _cstring(data: bytes, at: int) -> str:
    end = data.find(b"\0", at)
    if at >= len(data) or end < 0:
        raise ElfError("string outside the file")
    return data[at:end].decode()


# -- resolving inside a root tree ------------------------------------------------------


def resolve_in_root(root: Path, path: str) -> Path | None:
    """`path` (absolute within `root`) with every symlink followed inside `root`, as a
    chroot would; None if it does not exist. Never leaves `root`."""
    parts = list(PurePosixPath("/", path).parts[1:])
    current = PurePosixPath("/")
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        host = root / candidate.relative_to("/")
        if host.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = PurePosixPath(os.readlink(host))
            if target.is_absolute():
                current = PurePosixPath("/")
            parts = [p for p in target.parts if p != "/"] + parts
            continue
        if not host.exists():
            return None
        current = candidate
    return root / current.relative_to("/")


def find_library(root: Path, name: str, extra_dirs: tuple[str, ...] = ()) -> str | None:
    """The path (inside `root`) where the loader would find `name`, or None."""
    if "/" in name:
        return name.lstrip("/") if resolve_in_root(root, name) else None
    for directory in (*extra_dirs, *DEFAULT_LIB_DIRS):
        candidate = f"{directory.strip('/')}/{name}"
        if resolve_in_root(root, candidate) is not None:
            return candidate
    return None


def library_closure(root: Path, binary: str) -> list[str]:
    """Every file `binary` needs to run (loader and libraries, transitively), as paths
    inside `root`, sorted. BuildError-free: raises ElfError naming what is missing."""
    found: set[str] = set()
    queue = [binary.lstrip("/")]
    while queue:
        current = queue.pop()
        host = resolve_in_root(root, current)
        if host is None:
            raise ElfError(f"{current} not found under {root}")
        data = host.read_bytes()
        if not is_elf(data):
            continue
        deps = elf_deps(data)
        wanted = [deps.interpreter] if deps.interpreter else []
        extra = tuple(
            p.replace("$ORIGIN", str(PurePosixPath("/", current).parent)).lstrip("/")
            for p in deps.search_path
        )
        for name in (*wanted, *deps.needed):
            path = find_library(root, name, extra)
            if path is None:
                raise ElfError(f"{current} needs {name}, which is not in {root}")
            if path not in found:
                found.add(path)
                queue.append(path)
    return sorted(found)
