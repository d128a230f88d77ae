"""The base root tree: built by mkosi, unpacked from a tarball, or given prebuilt.

mkosi's trees differ between runs only in logs, caches and the days-since-epoch in
/etc/shadow; `normalize_tree` removes or pins those so the squashfs made from two
builds of the same package set is byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

from builder.config import BaseConfig, ImageDefinition
from builder.errors import BuildError
from builder.run import require_tool, run
from builder.templating import render

# Paths (relative to the root) whose files vary between identical builds.
VOLATILE_DIRS = ("var/log", "var/cache/apt", "var/lib/apt/lists", "var/cache/debconf")
VOLATILE_FILES = ("var/cache/ldconfig/aux-cache", "etc/machine-id", "var/lib/dbus/machine-id")
NORMALIZE_VERSION = 1


def mkosi_version() -> str:
    require_tool("mkosi", "build the base tree")
    return run(["mkosi", "--version"], timeout=60).stdout.decode().strip()


def build_with_mkosi(
    defn: ImageDefinition, workdir: Path, package_cache: Path, *, show_output: bool
) -> Path:
    """Run mkosi in `workdir` (a fresh directory) and return the root tree."""
    version = mkosi_version()
    conf = render("mkosi.conf.j2", base=defn.base, definition=defn.path.name, mkosi_version=version)
    (workdir / "mkosi.conf").write_text(conf)
    package_cache.mkdir(parents=True, exist_ok=True)
    run(
        # Debian's mkosi 14 needs --nspawn-keep-unit where there is no system bus.
        ["mkosi", "--nspawn-keep-unit", "--force", "--cache", package_cache, "build"],
        cwd=workdir,
        timeout=3600,
        capture=not show_output,
    )
    root = workdir / "root"
    if not root.is_dir():
        raise BuildError(f"mkosi finished but wrote no tree at {root}")
    return root


def unpack_tarball(tarball: Path, dest: Path) -> Path:
    require_tool("tar", "unpack the base tarball")
    dest.mkdir()
    run(["tar", "--numeric-owner", "--xattrs", "-xpf", tarball, "-C", dest], timeout=1800)
    return dest


def normalize_tree(root: Path, *, name: str, epoch: int) -> None:
    """Remove what varies between identical builds; pin a machine-id derived from the name."""
    for rel in VOLATILE_DIRS:
        d = root / rel
        if d.is_dir():
            for p in sorted(d.rglob("*"), reverse=True):
                if p.is_file() or p.is_symlink():
                    p.unlink()
    for rel in VOLATILE_FILES:
        p = root / rel
        if p.is_file() and not p.is_symlink():
            p.unlink()
    # A fixed machine-id: every boot on the tmpfs overlay would otherwise be a "first boot".
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/machine-id").write_text(machine_id(name) + "\n")
    for shadow in ("etc/shadow", "etc/shadow-"):
        _pin_shadow_dates(root / shadow, epoch // 86400)


def machine_id(name: str) -> str:
    return hashlib.sha256(b"actvsm machine-id\0" + name.encode()).hexdigest()[:32]


def _pin_shadow_dates(path: Path, day: int) -> None:
    if not path.is_file():
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    lines = []
    for line in path.read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2]:
            fields[2] = str(day)
        lines.append(":".join(fields))
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, mode)


def tree_fingerprint(root: Path) -> str:
    """A digest of a prebuilt tree's metadata (path, type, mode, owner, size, mtime, link).

    Cheap enough for every build and changes whenever a file is touched, like make's
    view of its inputs. Contents are hashed later, in the image itself.
    """
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else ""
            rel = p.relative_to(root).as_posix()
            h.update(
                f"{rel}\0{st.st_mode}\0{st.st_uid}\0{st.st_gid}\0{st.st_size}\0"
                f"{st.st_mtime_ns}\0{link}\0{st.st_rdev}\n".encode()
            )
    return h.hexdigest()


def overlay_tree(src: Path, dest: Path) -> None:
    """Copy `src` over `dest` (files replaced, directories merged), owned by root."""
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            rel = (Path(dirpath) / name).relative_to(src)
            os.lchown(dest / rel, 0, 0)


def base_settings(base: BaseConfig) -> dict[str, object]:
    """The settings that decide the tree's content (the tree stage's cache inputs)."""
    return {
        "distribution": base.distribution,
        "release": base.release,
        "packages": sorted(base.packages),
        "mirror": base.mirror,
        "hostname": base.hostname,
    }
