"""PCR banks (hash algorithms) as the TPM and the TCG event log name them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from enum import StrEnum
from typing import Any


class Bank(StrEnum):
    SHA1 = "sha1"
    SHA256 = "sha256"
    SHA384 = "sha384"
    SHA512 = "sha512"

    @property
    def alg_id(self) -> int:
        """TPM_ALG_ID (TCG Algorithm Registry)."""
        return _ALG_ID[self]

    @property
    def size(self) -> int:
        return _SIZE[self]

    def new(self) -> Any:
        """A fresh hashlib object for this bank."""
        return _NEW[self]()

    def hash(self, data: bytes) -> bytes:
        return _NEW[self](data).digest()  # type: ignore[no-any-return]

    @property
    def zero(self) -> bytes:
        return bytes(self.size)

    @classmethod
    def from_alg_id(cls, alg_id: int) -> Bank:
        for bank, value in _ALG_ID.items():
            if value == alg_id:
                return bank
        raise KeyError(alg_id)


ALL_BANKS: tuple[Bank, ...] = (Bank.SHA1, Bank.SHA256, Bank.SHA384, Bank.SHA512)

_ALG_ID = {Bank.SHA1: 0x0004, Bank.SHA256: 0x000B, Bank.SHA384: 0x000C, Bank.SHA512: 0x000D}
_SIZE = {Bank.SHA1: 20, Bank.SHA256: 32, Bank.SHA384: 48, Bank.SHA512: 64}
_NEW: dict[Bank, Callable[..., Any]] = {
    Bank.SHA1: hashlib.sha1,
    Bank.SHA256: hashlib.sha256,
    Bank.SHA384: hashlib.sha384,
    Bank.SHA512: hashlib.sha512,
}


def parse_bank(name: str) -> Bank:
    """Bank from its name; ValueError names the accepted ones."""
    try:
        return Bank(name.lower())
    except ValueError:
        raise ValueError(
            f"unknown bank {name!r}; use one of {', '.join(b.value for b in ALL_BANKS)}"
        ) from None
