"""Helpers for tests that build images: a small root tree made from the host's own
busybox, kernel and tboot (installed by `make`), and the small definition beside it."""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys
from pathlib import Path

from builder import paths
from builder.initramfs import MODULES
from builder.initramfs_archive import module_load_order, parse_modules_dep

SMALL_DEF = paths.IMAGES / "tests" / "small.yaml"


def host_kernel() -> Path:
    found = sorted(glob.glob("/boot/vmlinuz-*"))
    assert found, "no /boot/vmlinuz-*: `make` installs linux-image-amd64"
    return Path(found[-1])


def copy_host_modules(dest: Path, kver: str, names: tuple[str, ...]) -> None:
    """The host's modules `names` with their dependencies, and its modules.dep."""
    moddir = Path("/lib/modules") / kver
    deps = parse_modules_dep((moddir / "modules.dep").read_text())
    for module in module_load_order(deps, names):
        target = dest / "lib/modules" / kver / module
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(moddir / module, target)
    shutil.copy2(moddir / "modules.dep", dest / "lib/modules" / kver / "modules.dep")


def make_small_tree(dest: Path, *, extra: dict[str, bytes] | None = None) -> Path:
    """A tiny root: busybox, the host kernel and its modules the initramfs needs,
    tboot.gz, an /etc and a few files."""
    for d in ("bin", "boot", "etc", "sbin", "usr/bin", "proc", "sys", "dev", "tmp", "run"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", dest / "bin" / "busybox")
    (dest / "bin" / "sh").symlink_to("busybox")
    kernel = host_kernel()
    shutil.copy2(kernel, dest / "boot" / kernel.name)
    copy_host_modules(dest, kernel.name.removeprefix("vmlinuz-"), MODULES)
    shutil.copy2("/boot/tboot.gz", dest / "boot" / "tboot.gz")
    (dest / "etc" / "hostname").write_text("small\n")
    (dest / "etc" / "os-release").write_text("ID=actvsm-small\n")
    for rel, data in (extra or {}).items():
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return dest


def small_definition(workdir: Path, text: str | None = None) -> Path:
    """Copy (or write) the small definition into `workdir`, next to a fresh small tree."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "small-tree").exists():
        make_small_tree(workdir / "small-tree")
    path = workdir / "small.yaml"
    path.write_text(text if text is not None else SMALL_DEF.read_text())
    return path


def actvsm(
    *args: str, check: bool = False, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "builder.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"actvsm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc
