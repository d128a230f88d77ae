"""A full default build against bare mkosi making the same read-only image, same run.

Both sides start from the same warm mkosi package cache (downloads are not what we
compare) and an empty stage cache. Prints the ratio (goal: at most 1.0) and the time
of a rebuild with nothing changed (goal: seconds).

    .venv/bin/python -m benchmarks.build [DEFINITION]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from builder import paths
from builder.config import load_definition


def timed(cmd: list[str], cwd: Path | None = None) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = sys.argv[1:] if argv is None else argv
    definition = Path(args[0]) if args else paths.IMAGES / "default.yaml"
    defn = load_definition(definition)
    actvsm = str(Path(sys.executable).parent / "actvsm")
    with tempfile.TemporaryDirectory(prefix="actvsm-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        packages = work / "packages"
        # Warm the package cache once (not timed).
        subprocess.run(
            [
                actvsm,
                "build",
                "-q",
                str(definition),
                "-o",
                str(work / "warm"),
                "--cache-dir",
                str(work / "warm-cache"),
            ],
            check=True,
        )
        shutil.move(str(work / "warm-cache" / "mkosi-packages"), packages)
        shutil.rmtree(work / "warm-cache")

        mk = work / "mkosi"
        mk.mkdir()
        mkosi_cmd = [
            "mkosi",
            "--nspawn-keep-unit",
            "--force",
            "--distribution",
            defn.base.distribution,
            "--release",
            defn.base.release,
            "--format",
            "plain_squashfs",
            "--package",
            ",".join(defn.base.packages),
            "--cache",
            str(packages),
            "--output",
            str(mk / "image.raw"),
        ]
        t_mkosi = timed(mkosi_cmd, cwd=mk)

        cache = work / "cache"
        cache.mkdir()
        (cache / "mkosi-packages").symlink_to(packages)
        build_cmd = [
            actvsm,
            "build",
            "-q",
            str(definition),
            "-o",
            str(work / "out"),
            "--cache-dir",
            str(cache),
        ]
        t_full = timed(build_cmd)
        t_again = timed(build_cmd)
        ours = json.loads((work / "out" / defn.name / "manifest.json").read_text())["artifacts"][
            f"base.{defn.base.format}"
        ]["size"]
        theirs = (mk / "image.raw").stat().st_size
    result = {
        "mkosi_plain_squashfs_s": round(t_mkosi, 1),
        "actvsm_full_build_s": round(t_full, 1),
        "ratio_full_build_to_mkosi": round(t_full / t_mkosi, 3),
        "actvsm_no_change_rebuild_s": round(t_again, 2),
        "actvsm_base_bytes": ours,
        "mkosi_squashfs_bytes": theirs,
    }
    for key, value in result.items():
        print(f"{key:32} {value}")
    return result


if __name__ == "__main__":
    main()
