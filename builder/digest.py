"""Hash a file in several banks in one read (placeholder; helper replaces with threaded version)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from builder.banks import Bank


def file_digests(path: Path, banks: Iterable[Bank]) -> tuple[int, dict[Bank, bytes]]:
    hashers = {b: b.new() for b in banks}
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            size += len(chunk)
            for h in hashers.values():
                h.update(chunk)
    return size, {b: h.digest() for b, h in hashers.items()}
