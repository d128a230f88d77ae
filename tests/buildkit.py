"""Helpers for tests that build images: a small root tree made from the host's own
busybox, kernel and tboot (installed by `make`), and the small definition beside it."""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys
from pathlib import Path

from builder import paths
from builder.boot import MARKER
from builder.elfdeps import library_closure
from builder.initramfs import BINARIES, DLOPENED, FORMAT_MODULES, MODULES
from builder.initramfs_archive import module_load_order, parse_modules_dep

SMALL_DEF = paths.IMAGES / "tests" / "small.yaml"
TWO_VOLUMES_DEF = paths.IMAGES / "tests" / "small-2vol.yaml"
FULLHASH_DEF = paths.IMAGES / "tests" / "small-fullhash.yaml"
ALL_MODULES = MODULES + tuple(m for ms in FORMAT_MODULES.values() for m in ms)

# The small image's workload (/sbin/init after switch_root): shows the mode, the PCRs
# after the phase cap, which volumes are mounted, bumps a counter on each mounted
# volume, then prints the marker and powers off.
WORKLOAD = f"""#!/bin/sh
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
for arg in $(cat /proc/cmdline); do
	case "$arg" in actvsm.mode=*) echo "ACTVSM-MODE ${{arg#actvsm.mode=}}" ;; esac
done
for b in sha1 sha256; do for p in 11 17 18 19; do
	echo "ACTVSM-PCR $b $p $(cat /sys/class/tpm/tpm0/pcr-$b/$p)"
done; done
echo "ACTVSM-MAPPED $(ls /dev/mapper | grep actvsm- | tr '\\n' ' ')"
for dir in /data /logs; do
	grep -q " $dir " /proc/mounts || continue
	n=$(cat "$dir/boot-count" 2>/dev/null || echo 0)
	echo "ACTVSM-DATA $dir read $n"
	echo $((n + 1)) >"$dir/boot-count"
	sync
	umount "$dir"
done
sync
echo "{MARKER} small"
poweroff -f
"""


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


def copy_host_binaries(dest: Path, names: tuple[str, ...]) -> None:
    """Host files `names` (relative to /) with their shared-library closure."""
    host = Path("/")
    for name in names:
        for rel in (name, *library_closure(host, name)):
            target = dest / rel
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(host / rel, target)


def make_small_tree(dest: Path, *, extra: dict[str, bytes] | None = None) -> Path:
    """A tiny root: busybox, the host kernel and its modules the initramfs needs,
    cryptsetup, veritysetup and tpm2-tools with their libraries, tboot.gz, an /etc, the
    workload as /sbin/init and mount points for the test volumes."""
    for d in ("bin", "boot", "etc", "sbin", "usr/bin", "proc", "sys", "dev", "tmp", "run"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    for d in ("data", "logs"):
        (dest / d).mkdir(exist_ok=True)
    shutil.copy2("/bin/busybox", dest / "bin" / "busybox")
    (dest / "bin" / "sh").symlink_to("busybox")
    copy_host_binaries(dest, tuple(b for b in BINARIES if b != "bin/busybox") + DLOPENED)
    (dest / "sbin" / "init").write_text(WORKLOAD)
    (dest / "sbin" / "init").chmod(0o755)
    kernel = host_kernel()
    shutil.copy2(kernel, dest / "boot" / kernel.name)
    copy_host_modules(dest, kernel.name.removeprefix("vmlinuz-"), ALL_MODULES)
    shutil.copy2("/boot/tboot.gz", dest / "boot" / "tboot.gz")
    (dest / "etc" / "hostname").write_text("small\n")
    (dest / "etc" / "os-release").write_text("ID=actvsm-small\n")
    for rel, data in (extra or {}).items():
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return dest


def small_definition(workdir: Path, text: str | None = None, *, source: Path = SMALL_DEF) -> Path:
    """Copy (or write) the small definition into `workdir`, next to a fresh small tree."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "small-tree").exists():
        make_small_tree(workdir / "small-tree")
    path = workdir / source.name
    path.write_text(text if text is not None else source.read_text())
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
