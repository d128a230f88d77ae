"""Hash one file in several banks with one pass over its bytes.

Artifacts are listed in the manifest with their size and a digest in every bank.
Reading a large image four times would cost four reads; instead one reader fills a
few large buffers and each bank's hash runs in its own thread over the same
buffers. hashlib releases the GIL while hashing large buffers (and file reads release
it too), so on N cores the banks run in parallel and the wall time approaches the
slowest bank's, or the sum / N.
Small files (and files that cannot be mapped, such as pipes) are read sequentially
into every hash: threads would cost more than they save.
"""

from __future__ import annotations

import os
import queue
import stat
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from builder.banks import Bank

CHUNK = 4 * 1024 * 1024  # per read and update: hashlib drops the GIL, the L2/L3 cache holds it
RING = 4  # buffers in flight: the reader can run ahead of the slowest bank
THREADED_MIN = 8 * 1024 * 1024  # below this, threads cost more than they save


def file_digests(path: Path | str, banks: Iterable[Bank]) -> tuple[int, dict[Bank, bytes]]:
    """(size in bytes, {bank: digest}) of the file at `path`; OSError if unreadable."""
    banks = tuple(dict.fromkeys(banks))
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode) and st.st_size >= THREADED_MIN and len(banks) > 1:
            return _threaded(f, banks)
        return _sequential(f, banks)


def _sequential(f: Any, banks: tuple[Bank, ...]) -> tuple[int, dict[Bank, bytes]]:
    hashes = {b: b.new() for b in banks}
    size = 0
    buf = bytearray(1024 * 1024)
    view = memoryview(buf)
    while n := f.readinto(buf):
        size += n
        for h in hashes.values():
            h.update(view[:n])
    return size, {b: h.digest() for b, h in hashes.items()}


def _threaded(f: Any, banks: tuple[Bank, ...]) -> tuple[int, dict[Bank, bytes]]:
    """One reader fills a ring of buffers; one thread per bank hashes each buffer.

    A buffer is reused once every bank's thread is done with it. (Plain reads rather
    than mmap: a file truncated while we hash it gives a short read, not SIGBUS.)
    """
    buffers = [bytearray(CHUNK) for _ in range(RING)]
    free: queue.Queue[int] = queue.Queue()
    for i in range(RING):
        free.put(i)
    inboxes: list[queue.Queue[tuple[int, int] | None]] = [queue.Queue() for _ in banks]
    pending = [0] * RING
    lock = threading.Lock()
    results: dict[Bank, bytes] = {}
    errors: list[BaseException] = []

    def work(bank: Bank, inbox: queue.Queue[tuple[int, int] | None]) -> None:
        h = bank.new()
        while (item := inbox.get()) is not None:
            idx, n = item
            try:
                if not errors:
                    h.update(memoryview(buffers[idx])[:n])
            except BaseException as exc:  # noqa: BLE001 - re-raised by the reader
                errors.append(exc)
            finally:
                with lock:
                    pending[idx] -= 1
                    if pending[idx] == 0:
                        free.put(idx)
        results[bank] = h.digest()

    threads = [
        threading.Thread(target=work, args=(b, q), daemon=True)
        for b, q in zip(banks, inboxes, strict=True)
    ]
    for t in threads:
        t.start()
    size = 0
    try:
        while not errors:
            idx = free.get()
            n = f.readinto(buffers[idx])
            if not n:
                break
            size += n
            with lock:
                pending[idx] = len(banks)
            for inbox in inboxes:
                inbox.put((idx, n))
    finally:
        for inbox in inboxes:
            inbox.put(None)
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return size, {b: results[b] for b in banks}


def file_sha256(path: Path) -> bytes:
    """The sha256 of a file (one bank of `file_digests`)."""
    return file_digests(path, (Bank.SHA256,))[1][Bank.SHA256]
