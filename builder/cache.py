"""The stage cache: each stage's outputs stored under the digest of its inputs.

A key is the sha256 of the canonical JSON of everything the stage reads (settings,
input digests, tool versions, and the stage's own version). Entries are written into
a temporary directory and renamed into place, so a killed build never leaves a
half-written entry that a later build would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.run import debug_enabled


def input_key(inputs: dict[str, Any]) -> str:
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def default_cache_dir() -> Path:
    env = os.environ.get("ACTVSM_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "actvsm"


@dataclass
class StageCache:
    """`root/<stage>/<key>/` holds one entry: the outputs and `inputs.json`."""

    root: Path | None  # None: caching disabled (--no-cache)

    def lookup(self, stage: str, inputs: dict[str, Any]) -> Path | None:
        if self.root is None:
            return None
        entry = self.root / stage / input_key(inputs)
        if (entry / "inputs.json").is_file():
            return entry
        if debug_enabled():
            self._explain_miss(stage, inputs)
        return None

    def new_entry(self, stage: str) -> Path:
        """A private scratch directory for a stage's outputs (inside the cache when on)."""
        parent = (self.root / stage) if self.root is not None else Path(tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Path(tempfile.mkdtemp(prefix=f".{stage}.tmp-{os.getpid()}-", dir=parent))

    def commit(self, stage: str, inputs: dict[str, Any], scratch: Path) -> Path:
        """Publish a finished scratch directory as the entry for `inputs`."""
        (scratch / "inputs.json").write_text(
            json.dumps(inputs, sort_keys=True, indent=1, default=str)
        )
        if self.root is None:
            return scratch
        entry = self.root / stage / input_key(inputs)
        if entry.exists():
            shutil.rmtree(entry)
        os.rename(scratch, entry)
        return entry

    def _explain_miss(self, stage: str, inputs: dict[str, Any]) -> None:
        """Under --debug, show how the inputs differ from the newest entry of this stage."""
        assert self.root is not None
        entries = sorted(
            (p for p in (self.root / stage).glob("*/inputs.json")), key=lambda p: p.stat().st_mtime
        )
        if not entries:
            return
        old = json.loads(entries[-1].read_text())
        new = json.loads(json.dumps(inputs, default=str))
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                print(f"cache miss ({stage}): {key}: {old.get(key)!r} -> {new.get(key)!r}")

    def remove_stale_scratch(self) -> None:
        """Drop scratch directories of builds that died (their pid is gone)."""
        if self.root is None or not self.root.is_dir():
            return
        for scratch in self.root.glob("*/.*.tmp-*"):
            pid = _pid_of(scratch.name)
            if pid is not None and not _alive(pid):
                shutil.rmtree(scratch, ignore_errors=True)


def _pid_of(name: str) -> int | None:
    try:
        return int(name.split(".tmp-", 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
