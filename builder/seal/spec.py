"""What a sealed volume is made of: its definition and the policy's PCR selection."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from builder.banks import Bank
from builder.errors import input_error

MIB = 1024 * 1024
# Room cryptsetup's offline `reencrypt --encrypt` needs at the end of the file system:
# half becomes the LUKS2 header, half stays unused (cryptsetup(8), --reduce-device-size).
REENCRYPT_REDUCE = 16 * MIB
MIN_SIZE = 32 * MIB
DEFAULT_PCRS = (11, 17, 18, 19)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class FsType(StrEnum):
    EXT4 = "ext4"
    NONE = "none"


@dataclass(frozen=True)
class PolicySpec:
    """Which PCRs of which bank the sealing policy covers (PolicyPCR's selection)."""

    pcrs: tuple[int, ...] = DEFAULT_PCRS
    bank: Bank = Bank.SHA256

    def __post_init__(self) -> None:
        if not self.pcrs:
            raise input_error("the policy selects no PCR", field="pcrs", hint="e.g. 11,17,18,19")
        for pcr in self.pcrs:
            if not 0 <= pcr <= 23:
                raise input_error(f"PCR {pcr} out of range 0..23", field="pcrs")
        object.__setattr__(self, "pcrs", tuple(sorted(set(self.pcrs))))

    @property
    def selection(self) -> str:
        """tpm2-tools / tpm2-pytss form, e.g. `sha256:11,17,18,19`."""
        return f"{self.bank.value}:{','.join(str(p) for p in self.pcrs)}"


@dataclass(frozen=True)
class VolumeSpec:
    """One LUKS2 volume: `size` in bytes of the whole image file, header included."""

    name: str
    size: int
    modes: tuple[str, ...]
    fs: FsType = FsType.NONE
    content: Path | None = None
    recovery_file: Path | None = None

    def __post_init__(self) -> None:
        where = f"volumes.{self.name}"
        if not NAME_RE.match(self.name):
            raise input_error(
                f"volume name {self.name!r} is not a plain name",
                field="volumes",
                hint="use letters, digits, '.', '_' and '-' (at most 64)",
            )
        if self.size < MIN_SIZE or self.size % 4096:
            raise input_error(
                f"size {self.size} bytes is too small or not a multiple of 4096",
                field=f"{where}.size",
                hint=f"use at least {MIN_SIZE // MIB} MiB, in whole 4 KiB blocks",
            )
        if not self.modes:
            raise input_error("no mode may open this volume", field=f"{where}.modes")
        if self.content is not None and self.fs is FsType.NONE:
            raise input_error(
                "initial content needs a file system",
                field=f"{where}.content",
                hint="set fs: ext4, or drop content",
            )
        if self.content is not None and not self.content.is_dir():
            raise input_error(
                f"content directory {self.content} does not exist", field=f"{where}.content"
            )
