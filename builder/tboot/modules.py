"""Boot modules as tboot sees them: what GRUB hands over and how tboot measures it. Pure.

GRUB 2 (`module2 FILE ARGS...`) drops the file name, joins the remaining words with
single spaces, and decompresses gzip/xz/lzop files unless `--nounzip`. tboot removes
SINIT ACM and LCP policy-data modules before numbering the rest from 0, then measures
module i as H( H(cmdline) || H(image) ) in each bank it extends.
"""

from __future__ import annotations

import functools
import lzma
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from builder.banks import Bank
from builder.errors import InputError

# Words GRUB passes through unchanged: no quotes, escapes, variables, wildcards,
# comments or operators of its script lexer, and nothing grub_create_loader_cmdline
# would escape (backslash, quotes).
_SAFE_WORD = re.compile(r"[A-Za-z0-9_.,:=/+@%^~-]+")
_SPECIAL = set("\\'\"$;|&<>(){}#*?[]!`\t\n\r")

# tboot limits (tboot 1.10: include/config.h, tboot/include/cmdline.h,
# tboot/include/linux_defns.h, tboot/common/linux.c, tboot/include/integrity.h).
TBOOT_KERNEL_CMDLINE_SIZE = 0x400  # kernel cmdline buffer, incl. " tboot=0x%08x" + NUL
TBOOT_APPENDED = len(" tboot=0x") + 8
MAX_KERNEL_CMDLINE = TBOOT_KERNEL_CMDLINE_SIZE - 1 - TBOOT_APPENDED
MAX_SETUP_SECTS = 64
MIN_BOOT_PROTOCOL = 0x0205  # Linux >= 2.6.20
MAX_VL_HASHES = 32  # measurements tboot keeps; more are silently not extended
MAX_MODULE_NUM = 127


def check_cmdline(cmdline: str, what: str) -> None:
    """Refuse a command line that GRUB would pass differently from how it is written.

    The measured string must be byte-identical to the one GRUB passes, so only words of
    plain characters separated by single spaces are accepted.
    """
    hint = "use words of letters, digits and _.,:=/+@%^~- separated by single spaces"
    if cmdline == "":
        return
    if cmdline != cmdline.strip(" ") or "  " in cmdline:
        raise InputError(
            f"{what}: command line {cmdline!r} has leading, trailing or repeated spaces; "
            "GRUB would join its words with single spaces, so the measured string would differ",
            hint=hint,
        )
    for word in cmdline.split(" "):
        bad = sorted({c for c in word if c in _SPECIAL or not c.isprintable()})
        if bad or not _SAFE_WORD.fullmatch(word):
            shown = "".join(bad) if bad else "".join(sorted(set(re.sub(_SAFE_WORD, "", word))))
            raise InputError(
                f"{what}: command line word {word!r} contains {shown!r}, which GRUB's "
                "script parser would interpret (quote, escape, variable, wildcard or operator)",
                hint=hint,
            )
    if len(cmdline.encode()) != len(cmdline):
        raise InputError(f"{what}: command line must be ASCII", hint=hint)


class Compression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    XZ = "xz"
    LZOP = "lzop"


_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_LZOP_MAGIC = b"\x89LZO\x00\r\n\x1a\n"
# GRUB's gzio refuses (and so passes through undecompressed) these header flags.
_GZIO_UNSUPPORTED_FLAGS = 0x02 | 0x20 | 0xC0


def compression_of(data: bytes) -> Compression:
    """What GRUB's file filters would decompress `data` as."""
    if data[:2] == _GZIP_MAGIC and len(data) >= 10 and data[2] == 8:
        if data[3] & _GZIO_UNSUPPORTED_FLAGS:
            return Compression.NONE
        return Compression.GZIP
    if data.startswith(_XZ_MAGIC):
        return Compression.XZ
    if data.startswith(_LZOP_MAGIC):
        return Compression.LZOP
    return Compression.NONE


def loaded_image(data: bytes, what: str = "module") -> tuple[bytes, Compression]:
    """The bytes GRUB places in memory for a module file (decompressed), and the format.

    A build measures the same kernel and initrd once per mode and per policy entry:
    the last few results are kept (bytes objects cache their own hash, so the lookup
    costs one pass over the data only the first time).
    """
    try:
        return _loaded_image_cached(data)
    except InputError:
        return _loaded_image(data, what)  # raises again, naming the module


@functools.lru_cache(maxsize=4)
def _loaded_image_cached(data: bytes) -> tuple[bytes, Compression]:
    return _loaded_image(data, "module")


def _loaded_image(data: bytes, what: str) -> tuple[bytes, Compression]:
    kind = compression_of(data)
    if kind is Compression.GZIP:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = d.decompress(data) + d.flush()
        except zlib.error as exc:
            raise InputError(f"{what}: corrupt gzip data ({exc})") from None
        if d.unused_data.strip(b"\x00"):
            raise InputError(
                f"{what}: gzip file with several members; GRUB and tb_polgen disagree on it",
                hint="recompress it as a single gzip member",
            )
        return out, kind
    if kind is Compression.XZ:
        try:
            return lzma.decompress(data, format=lzma.FORMAT_XZ), kind
        except lzma.LZMAError as exc:
            raise InputError(f"{what}: corrupt xz data ({exc})") from None
    if kind is Compression.LZOP:
        raise InputError(
            f"{what}: lzop-compressed; GRUB would decompress it but actvsm cannot predict that",
            hint="ship it uncompressed, gzip- or xz-compressed",
        )
    return data, kind


def module_digest(cmdline: str, image: bytes, bank: Bank) -> bytes:
    """tboot's module measurement H( H(cmdline) || H(image) ) (cmdline without NUL)."""
    return bank.hash(bank.hash(cmdline.encode()) + bank.hash(image))


class ModuleKind(StrEnum):
    KERNEL = "kernel"
    INITRD = "initrd"
    SINIT = "sinit"  # SINIT ACM: removed by tboot before numbering
    LCP = "lcp"  # LCP policy data: removed by tboot before numbering
    OTHER = "other"


@dataclass(frozen=True)
class BootModule:
    """One `module2` line: file name (as on the boot partition), kind, args, file bytes."""

    name: str
    kind: ModuleKind
    cmdline: str
    data: bytes

    def loaded(self) -> tuple[bytes, Compression]:
        return loaded_image(self.data, self.name)


@dataclass(frozen=True)
class MeasuredModule:
    """A module after tboot's renumbering: number, the GRUB module, and its loaded bytes."""

    num: int
    module: BootModule
    image: bytes
    compression: Compression

    def digest(self, bank: Bank) -> bytes:
        return module_digest(self.module.cmdline, self.image, bank)


def number_modules(modules: Sequence[BootModule]) -> list[MeasuredModule]:
    """Drop SINIT ACMs and the (first) LCP data module as tboot does, number the rest.

    Also checks each measured command line and the kernel against tboot's limits.
    """
    if not modules:
        raise InputError("no boot modules: tboot needs at least the kernel")
    if modules[0].kind is not ModuleKind.KERNEL:
        raise InputError(f"module 0 ({modules[0].name}) must be the kernel")
    out: list[MeasuredModule] = []
    lcp_seen = False
    for i, mod in enumerate(modules):
        check_cmdline(mod.cmdline, f"module {mod.name}")
        if i > 0 and mod.kind is ModuleKind.SINIT:
            continue
        if mod.kind is ModuleKind.LCP and not lcp_seen:
            lcp_seen = True
            continue
        image, comp = mod.loaded()
        out.append(MeasuredModule(len(out), mod, image, comp))
    if len(out) - 1 > MAX_MODULE_NUM:
        raise InputError(f"{len(out)} measured modules; a tboot policy names at most 128")
    kernel = out[0]
    check_kernel(kernel.image, kernel.module.name)
    if len(kernel.module.cmdline) > MAX_KERNEL_CMDLINE:
        raise InputError(
            f"kernel command line has {len(kernel.module.cmdline)} characters; tboot keeps at "
            f"most {MAX_KERNEL_CMDLINE} (its {TBOOT_KERNEL_CMDLINE_SIZE}-byte buffer also holds "
            "' tboot=0x...')",
            hint="shorten the kernel command line",
        )
    initrds = [m for m in out if m.module.kind is ModuleKind.INITRD]
    if initrds:
        limit = initrd_addr_max(kernel.image)
        for m in initrds:
            if len(m.image) > limit:
                raise InputError(
                    f"initrd {m.module.name} is {len(m.image)} bytes loaded; the kernel's "
                    f"initrd_addr_max allows at most {limit:#x}",
                    hint="make the initramfs smaller",
                )
    return out


def check_kernel(image: bytes, name: str) -> None:
    """The Linux bzImage checks tboot makes before it boots the kernel (linux.c)."""
    if len(image) < 0x230 or struct.unpack_from("<I", image, 0x202)[0] != 0x53726448:
        raise InputError(f"kernel {name}: not a Linux bzImage (no 'HdrS' header)")
    setup_sects = image[0x1F1] or 4
    if setup_sects > MAX_SETUP_SECTS:
        raise InputError(
            f"kernel {name}: {setup_sects} setup sectors; tboot accepts at most {MAX_SETUP_SECTS}"
        )
    version = struct.unpack_from("<H", image, 0x206)[0]
    if version < MIN_BOOT_PROTOCOL:
        raise InputError(
            f"kernel {name}: boot protocol {version:#06x} is older than tboot's minimum "
            f"{MIN_BOOT_PROTOCOL:#06x} (Linux 2.6.20)"
        )


def initrd_addr_max(kernel: bytes) -> int:
    return int(struct.unpack_from("<I", kernel, 0x22C)[0])
