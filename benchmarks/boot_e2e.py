"""The measured boot end to end: QEMU start to the workload's marker, and the
initramfs's own time from its start to switch_root (guest uptime stamps the init
prints), for a verity base and a full-hash base built from the same root tree.

The full-hash variant is the same definition with `integrity: full-hash`. Prints the
seconds for each (best of N, one guest at a time) and the ratios full-hash/verity
measured in the same run. The base is the small test tree (tests/buildkit.py) unless
`--definition images/default.yaml` names the default image (its root tree comes from
the stage cache when `make image` ran before).

    .venv/bin/python -m benchmarks.boot_e2e [--repeat N] [--definition DEF]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from builder.boot import BootReport, BootRequest, boot_output


def build(defn: Path, out: Path, cache: Path | None) -> Path:
    cmd = [sys.executable, "-m", "builder.cli", "build", str(defn), "-o", str(out), "-q"]
    cmd += ["--cache-dir", str(cache)] if cache else []  # default: the user's stage cache
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"build of {defn} failed:\n{proc.stderr[-3000:]}")
    (built,) = [p for p in out.iterdir() if (p / "manifest.json").is_file()]
    return built


def variant(defn: Path, integrity: str, where: Path) -> Path:
    """`defn` with `integrity:` set, written beside it (so relative paths still work)."""
    text = defn.read_text()
    text, n = re.subn(r"(?m)^integrity: .*$", f"integrity: {integrity}", text)
    if n == 0:
        text += f"\nintegrity: {integrity}\n"
    path = defn.with_name(f".bench-{integrity}-{defn.name}")
    path.write_text(text)
    return path


def best(out: Path, repeat: int) -> BootReport:
    reports = []
    for _ in range(repeat):
        rep = boot_output(BootRequest(out, None, None, timeout=600))
        if not rep.ok or rep.seconds_to_marker is None:
            raise SystemExit(f"{out}: boot {rep.outcome}: {rep.message}\n{rep.console[-2000:]}")
        reports.append(rep)
    return min(reports, key=lambda r: r.seconds_to_marker or 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--definition", type=Path, default=None)
    ap.add_argument(
        "--cache-dir", type=Path, default=None, help="stage cache (default: actvsm's own)"
    )
    args = ap.parse_args([] if __name__ != "__main__" else None)
    with tempfile.TemporaryDirectory(prefix="actvsm-bench-") as tmp:
        work = Path(tmp)
        if args.definition is None:
            from tests.buildkit import TWO_VOLUMES_DEF, small_definition

            defn = small_definition(work, source=TWO_VOLUMES_DEF)
            label = "small test tree"
        else:
            defn = args.definition.resolve()
            label = str(args.definition)
        results: dict[str, BootReport] = {}
        made: list[Path] = []
        try:
            for integrity in ("verity", "full-hash"):
                source = variant(defn, integrity, work)
                made.append(source)
                out = build(source, work / f"out-{integrity}", args.cache_dir)
                results[integrity] = best(out, args.repeat)
        finally:
            for path in made:
                path.unlink(missing_ok=True)
    print(f"base: {label}; best of {args.repeat}; QEMU -accel tcg, one vCPU")
    print(f"{'integrity':<10} {'to marker (s)':>14} {'initramfs (s)':>14}")
    for name, rep in results.items():
        init = rep.initramfs_seconds
        print(f"{name:<10} {rep.seconds_to_marker:>14.2f} {init if init is not None else 0:>14.2f}")
    v, f = results["verity"], results["full-hash"]
    assert v.seconds_to_marker and f.seconds_to_marker
    print(f"ratio full-hash/verity, to marker: {f.seconds_to_marker / v.seconds_to_marker:.2f}")
    if v.initramfs_seconds and f.initramfs_seconds:
        print(f"ratio full-hash/verity, initramfs: {f.initramfs_seconds / v.initramfs_seconds:.2f}")


if __name__ == "__main__":
    main()
