"""Atomic publication of a build: write into a sibling temporary directory, then swap.

The swap uses renameat2(RENAME_EXCHANGE) so that `OUTDIR/<name>` is never missing
or half-written, even for a moment; a build that fails or is killed leaves the
previous output untouched and only a hidden `.<name>.tmp-<pid>-*` directory, which
the next build removes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import tempfile
from pathlib import Path

from builder.cache import _alive, _pid_of

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def make_staging_dir(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it 0700; the published output is world-readable
    return staging


def remove_stale_staging(target: Path) -> None:
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        pid = _pid_of(stale.name)
        if pid is not None and not _alive(pid):
            shutil.rmtree(stale, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    rc = libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return bool(rc == 0)


def publish(staging: Path, target: Path) -> None:
    """Make `staging` the new `target`; the old target, if any, is removed afterwards."""
    os.sync()
    if target.exists():
        if _exchange(staging, target):
            shutil.rmtree(staging)  # now holds the previous output
            return
        old = target.with_name(f".{target.name}.tmp-{os.getpid()}-old")
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old)
    else:
        os.rename(staging, target)
