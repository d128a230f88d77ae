"""The build pipeline: a flat list of verb-named stages over one BuildContext.

Each stage computes the inputs it depends on, looks them up in the stage cache, and
only on a miss does the work into a scratch directory that the cache then adopts.
Artifacts are copied from cache entries into the staging directory, which
`atomic.publish` swaps into place at the very end.
"""

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from builder.atomic import make_staging_dir, publish
from builder.cache import StageCache
from builder.config import ImageDefinition
from builder.context import BuildContext, BuildResult
from builder.errors import BuildError
from builder.manifest import build_manifest, write_manifest
from builder.stages.base import make_base_image, make_tree
from builder.stages.boot import collect_boot_files, make_initramfs
from builder.stages.installer import make_installer
from builder.stages.launch import make_launch
from builder.stages.seal import SealTarget, seal_volumes
from builder.ui import Reporter

__all__ = ["STAGES", "BuildContext", "BuildResult", "SealTarget", "build"]

Stage = Callable[[BuildContext], None]

# The pipeline, in order.
STAGES: list[Stage] = [
    make_tree,
    make_base_image,
    collect_boot_files,
    make_initramfs,
    make_launch,
    seal_volumes,
    make_installer,
]


def build(
    defn: ImageDefinition,
    outdir: Path,
    cache: StageCache,
    reporter: Reporter,
    *,
    show_output: bool | None = None,
    stages: list[Stage] | None = None,
    seal_target: SealTarget | None = None,
) -> BuildResult:
    """Run every stage into a staging directory and publish it as OUTDIR/<name>."""
    if show_output is None:
        show_output = sys.stderr.isatty() and not reporter.quiet
    target = outdir.resolve() / defn.name
    cache.remove_stale_scratch()
    staging = make_staging_dir(target)
    ctx = BuildContext(defn, staging, cache, reporter, show_output, seal_target=seal_target)
    try:
        todo = stages if stages is not None else STAGES
        for number, stage in enumerate(todo, start=1):
            reporter.step = (number, len(todo) + 1)  # the manifest is the last step
            stage(ctx)
        reporter.step = (len(todo) + 1, len(todo) + 1)
        with reporter.stage("manifest", "writing manifest.json"):
            manifest = build_manifest(ctx.defn, ctx.artifacts, ctx.facts, ctx.known_digests)
            ctx.remember_digests(manifest["artifacts"])
            write_manifest(staging / "manifest.json", manifest)
        publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not target.is_dir():
        raise BuildError(f"output {target} missing after publish")
    return BuildResult(target, manifest, dict(reporter.timings), dict(ctx.cached))
