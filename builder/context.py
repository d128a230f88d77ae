"""What every stage of a build shares: the definition, the staging directory, the cache,
the reporter, and what earlier stages found (artifacts and facts)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.cache import StageCache
from builder.config import ImageDefinition
from builder.digest import file_sha256
from builder.ui import Reporter

if TYPE_CHECKING:
    from builder.stages.seal import SealTarget


@dataclass
class BuildContext:
    defn: ImageDefinition
    staging: Path
    cache: StageCache
    reporter: Reporter
    show_output: bool
    artifacts: dict[str, Path] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)
    tree_root: Path | None = None
    seal_target: SealTarget | None = None
    sources: dict[str, Path] = field(default_factory=dict)  # artifact -> its cache file
    known_digests: dict[str, Any] = field(default_factory=dict)

    def cache_dir_for(self, name: str) -> Path:
        """A persistent directory for tools' own caches (mkosi's package cache)."""
        if self.cache.root is not None:
            return self.cache.root / name
        return self.staging / ".tool-cache" / name

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> Path:
        dest = self.staging / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        dest.chmod(mode)
        self.artifacts[name] = dest
        return dest

    def add_artifact(self, name: str, source: Path) -> Path:
        dest = self.staging / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        self.artifacts[name] = dest
        if self._in_cache(source):
            self.sources[name] = source
            memo = _read_memo(source.parent).get(source.name)
            if memo is not None:
                self.known_digests[name] = memo
        return dest

    def sha256_of(self, artifact: Path) -> str:
        """An artifact's sha256 (hex), from the digests already known when there are."""
        for name, path in self.artifacts.items():
            if path == artifact and name in self.known_digests:
                return str(self.known_digests[name]["digests"]["sha256"])
        return file_sha256(artifact).hex()

    def _in_cache(self, path: Path) -> bool:
        return self.cache.root is not None and self.cache.root.resolve() in path.resolve().parents

    def remember_digests(self, entries: Mapping[str, Any]) -> None:
        """Store the digests of artifacts that came from cache entries next to them, so a
        rebuild does not hash the same (immutable) cached files again."""
        by_dir: dict[Path, dict[str, Any]] = {}
        for name, source in self.sources.items():
            if name in entries and name not in self.known_digests:
                by_dir.setdefault(source.parent, {})[source.name] = entries[name]
        for directory, new in by_dir.items():
            memo = _read_memo(directory) | new
            tmp = directory / f"{DIGEST_MEMO}.tmp"
            tmp.write_text(json.dumps(memo, sort_keys=True))
            tmp.replace(directory / DIGEST_MEMO)


DIGEST_MEMO = ".digests.json"


def _read_memo(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / DIGEST_MEMO).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class BuildResult:
    outdir: Path
    manifest: dict[str, Any]
    timings: dict[str, float]
    cached: dict[str, bool]
