"""What every stage of a build shares: the definition, the staging directory, the cache,
the reporter, and what earlier stages found (artifacts and facts)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.cache import StageCache
from builder.config import ImageDefinition
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
        return dest


@dataclass
class BuildResult:
    outdir: Path
    manifest: dict[str, Any]
    timings: dict[str, float]
    cached: dict[str, bool]
