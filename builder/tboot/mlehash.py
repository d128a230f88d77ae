"""The MLE hash SINIT measures: tboot's loaded image with its command line filled in. Pure.

Facts from tboot's lcptools-v2/mlehash.c (what lcp2_mlehash computes): the (gzip-
decompressed) file must be a 32-bit little-endian i386 ET_EXEC ELF. Its PT_LOAD segments
are laid out one after another from offset 0 (file bytes, then zeros up to p_memsz) in a
zeroed buffer as long as the highest p_paddr + p_memsz. The MLE header is found by its
UUID at a 16-byte-aligned offset; the command-line area [cmdline_start_off,
cmdline_end_off) is zero-filled and the command line copied in (it must leave room for a
NUL); then [mle_start_off, mle_end_off) is hashed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from builder.banks import Bank
from builder.errors import InputError
from builder.tboot.modules import Compression, loaded_image

MLE_HDR_UUID = struct.pack(
    "<IHHH6B", 0x9082AC5A, 0x476F, 0x74A7, 0x5C0F, 0x55, 0xA2, 0xCB, 0x51, 0xB6, 0x42
)
MLE_HDR = struct.Struct("<16sIIIIIIIII")
ELF_HDR = struct.Struct("<16sHHIIIIIHHHHHH")
PHDR = struct.Struct("<IIIIIIII")
PT_LOAD = 1
MAX_EXPANDED = 64 << 20  # tboot 1.10 expands to about 45 MB (it loads at 8 MB)


@dataclass(frozen=True)
class MleImage:
    """tboot's expanded image and where its MLE and command-line area sit."""

    expanded: bytes
    mle_start: int
    mle_end: int
    cmdline_start: int
    cmdline_end: int

    @property
    def max_cmdline(self) -> int:
        """Longest command line that fits (the area also holds a terminating NUL)."""
        return self.cmdline_end - self.cmdline_start - 1

    def hash(self, cmdline: str | None, bank: Bank) -> bytes:
        """The MLE hash with `cmdline` in the command-line area (None: leave it as built)."""
        if cmdline is None:
            return bank.hash(self.expanded[self.mle_start : self.mle_end])
        raw = cmdline.encode()
        if len(raw) > self.max_cmdline:
            raise InputError(
                f"tboot command line has {len(raw)} bytes; tboot's buffer holds at most "
                f"{self.max_cmdline}",
                hint="shorten the tboot command line",
            )
        if not self.mle_start <= self.cmdline_start <= self.cmdline_end <= self.mle_end:
            raise InputError("tboot's command-line area lies outside its MLE")
        h = bank.new()
        h.update(memoryview(self.expanded)[self.mle_start : self.cmdline_start])
        h.update(raw + bytes(self.cmdline_end - self.cmdline_start - len(raw)))
        h.update(memoryview(self.expanded)[self.cmdline_end : self.mle_end])
        return bytes(h.digest())


def load_mle(data: bytes, what: str = "tboot") -> MleImage:
    """Expand tboot (gzip or plain ELF bytes) as lcp2_mlehash does."""
    elf, comp = loaded_image(data, what)
    if comp not in (Compression.NONE, Compression.GZIP):
        raise InputError(f"{what}: lcp2_mlehash reads plain or gzip-compressed files only")
    if len(elf) < ELF_HDR.size or elf[:4] != b"\x7fELF":
        raise InputError(f"{what}: not an ELF file")
    ident, e_type, machine, version, _entry, phoff, _sh, _fl, _eh, phentsize, phnum, *_ = (
        ELF_HDR.unpack_from(elf)
    )
    if ident[5] != 1 or e_type != 2 or machine != 3 or version != 1 or phentsize < PHDR.size:
        raise InputError(f"{what}: not a 32-bit little-endian i386 executable (tboot's MLE)")
    segments = []
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + PHDR.size > len(elf):
            raise InputError(f"{what}: program header {i} lies outside the file")
        p_type, p_offset, _va, p_paddr, p_filesz, p_memsz, _f, _a = PHDR.unpack_from(elf, off)
        if p_type == PT_LOAD:
            segments.append((p_offset, p_paddr, p_filesz, p_memsz))
    end = max((pa + mem for _o, pa, _f, mem in segments), default=0)
    if not segments or end == 0:
        raise InputError(f"{what}: no loadable segment")
    if end > MAX_EXPANDED:
        raise InputError(
            f"{what}: loads up to {end:#x}, too far for tboot (limit {MAX_EXPANDED:#x})"
        )
    buf = bytearray(end)
    pos = 0
    for p_offset, _pa, filesz, memsz in segments:
        if memsz > end - pos or filesz > memsz or p_offset + filesz > len(elf):
            raise InputError(f"{what}: a loadable segment does not fit")
        buf[pos : pos + filesz] = elf[p_offset : p_offset + filesz]
        pos += memsz
    at = _find_uuid(buf)
    if at < 0:
        raise InputError(f"{what}: no MLE header (not a tboot image?)")
    (_u, _len, _ver, _ep, _fvp, mle_start, mle_end, _caps, cl_start, cl_end) = MLE_HDR.unpack_from(
        buf, at
    )
    if not mle_start < mle_end <= len(buf):
        raise InputError(f"{what}: MLE header offsets outside the image")
    if cl_end <= cl_start:
        cl_start = cl_end = mle_start
    return MleImage(bytes(buf), mle_start, mle_end, cl_start, cl_end)


def _find_uuid(buf: bytearray) -> int:
    at = buf.find(MLE_HDR_UUID)
    while at >= 0 and at % 16:
        at = buf.find(MLE_HDR_UUID, at + 1)
    return at


def mle_hash(data: bytes, cmdline: str | None, bank: Bank) -> bytes:
    return load_mle(data).hash(cmdline, bank)
