"""The reproducible initramfs archive, judged by the real tools: cpio, ldd, modprobe, zstd."""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.elfdeps import ElfError, elf_deps, library_closure
from builder.errors import BuildError
from builder.initramfs_archive import (
    Archive,
    Compression,
    Kind,
    module_load_order,
    parse_modules_dep,
    source_date_epoch,
)

KVER = next(
    (p.name for p in sorted(Path("/lib/modules").iterdir()) if (p / "modules.dep").exists()),
    "",
)


def sample_root(root: Path) -> Path:
    """A small root tree: busybox, a script, a data file, a symlink."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    (root / "etc").mkdir()
    (root / "etc/motd").write_text("hello\n")
    os.chmod(root / "etc/motd", 0o640)
    (root / "bin/sh").symlink_to("busybox")
    return root


def sample_archive(root: Path) -> Archive:
    archive = Archive()
    archive.add_basic_devices()
    archive.add_from_root(root, "bin/busybox")
    archive.add_from_root(root, "etc/motd")
    archive.add_symlink("bin/sh", "busybox")
    archive.add_bytes("init", b"#!/bin/sh\nexec /bin/sh\n", 0o755)
    archive.add_dir("proc")
    return archive


def cpio_extract(archive: bytes, into: Path) -> None:
    into.mkdir()
    subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames"],
        input=archive,
        cwd=into,
        check=True,
        timeout=60,
    )


@pytest.mark.parametrize("compression", [Compression.GZIP, Compression.ZSTD])
def test_two_builds_are_byte_identical(tmp_path: Path, compression: Compression) -> None:
    root = sample_root(tmp_path / "root")
    first = sample_archive(root).build(compression, mtime=0)
    os.utime(root / "etc/motd", (1_700_000_000, 1_700_000_000))  # a newer source file
    second = sample_archive(root).build(compression, mtime=0)
    assert first == second
    decompressed = subprocess.run(
        ["gzip" if compression is Compression.GZIP else "zstd", "-d", "-c"],
        input=first,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    assert decompressed == sample_archive(root).build(Compression.NONE, mtime=0)


def test_cpio_lists_and_extracts_the_files(tmp_path: Path) -> None:
    root = sample_root(tmp_path / "root")
    data = sample_archive(root).build(Compression.NONE, mtime=1234567890)
    listing = subprocess.run(
        ["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True, timeout=60
    ).stdout.decode()
    names = ["bin", "bin/busybox", "bin/sh", "dev", "dev/console", "dev/null", "etc"]
    assert listing.splitlines() == [*names, "etc/motd", "init", "proc"]

    out = tmp_path / "out"
    cpio_extract(data, out)
    assert (out / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    assert stat.S_IMODE((out / "bin/busybox").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "etc/motd").stat().st_mode) == 0o640
    assert stat.S_IMODE((out / "init").stat().st_mode) == 0o755
    assert os.readlink(out / "bin/sh") == "busybox"
    console = (out / "dev/console").stat()
    assert stat.S_ISCHR(console.st_mode)
    assert (os.major(console.st_rdev), os.minor(console.st_rdev)) == (5, 1)
    assert all(p.lstat().st_uid == 0 and p.lstat().st_gid == 0 for p in out.rglob("*"))
    assert (out / "etc/motd").stat().st_mtime == 1234567890


names = st.text(alphabet="abcxyz-_.", min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    files=st.dictionaries(
        st.lists(names, min_size=1, max_size=3).map("/".join),
        st.tuples(st.binary(max_size=300), st.sampled_from([0o600, 0o644, 0o755, 0o4755])),
        max_size=8,
    )
)
def test_any_tree_round_trips_through_cpio(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, tuple[bytes, int]]
) -> None:
    # A path may not be both a file and another file's parent directory.
    paths = sorted(files)
    files = {p: v for p, v in files.items() if not any(q.startswith(p + "/") for q in paths)}
    archive = Archive()
    for path, (content, mode) in files.items():
        archive.add_bytes(path, content, mode)
    out = tmp_path_factory.mktemp("tree") / "out"
    cpio_extract(archive.build(Compression.NONE), out)
    extracted = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert extracted == set(files)
    for path, (content, mode) in files.items():
        assert (out / path).read_bytes() == content
        assert stat.S_IMODE((out / path).stat().st_mode) == mode


def test_entries_are_sorted_whatever_the_insertion_order() -> None:
    a, b = Archive(), Archive()
    for name in ("z", "a/b", "m"):
        a.add_bytes(name, name.encode())
    for name in ("m", "z", "a/b"):
        b.add_bytes(name, name.encode())
    assert a.build(Compression.NONE) == b.build(Compression.NONE)


def test_gzip_is_the_kernel_readable_kind() -> None:
    data = Archive().build(Compression.GZIP)
    assert gzip.decompress(data).endswith(b"TRAILER!!!\0\0\0\0")
    assert data[4:8] == bytes(4)  # gzip header mtime is zero


def test_source_date_epoch() -> None:
    assert source_date_epoch({"SOURCE_DATE_EPOCH": "1700000000"}) == 1700000000
    assert source_date_epoch({}) == 0
    with pytest.raises(BuildError, match="SOURCE_DATE_EPOCH"):
        source_date_epoch({"SOURCE_DATE_EPOCH": "yesterday"})


# -- ELF closure against ldd -------------------------------------------------------------


@pytest.mark.parametrize("binary", ["/usr/sbin/cryptsetup", "/usr/bin/tpm2_pcrread"])
def test_library_closure_matches_ldd(binary: str) -> None:
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True, timeout=60)
    expected = set()
    for line in ldd.stdout.splitlines():
        path = line.split("=>")[-1].split("(")[0].strip()
        if path.startswith("/"):
            expected.add(os.path.realpath(path))
    ours = {os.path.realpath("/" + p) for p in library_closure(Path("/"), binary)}
    assert ours == expected


def test_static_binary_needs_nothing() -> None:
    deps = elf_deps(Path("/bin/busybox").read_bytes())
    assert deps.interpreter is None and deps.needed == ()


def test_not_elf_and_missing_library(tmp_path: Path) -> None:
    with pytest.raises(ElfError):
        elf_deps(b"#!/bin/sh\n" + bytes(100))
    root = tmp_path / "root"
    (root / "usr/sbin").mkdir(parents=True)
    shutil.copy2("/usr/sbin/cryptsetup", root / "usr/sbin/cryptsetup")
    with pytest.raises(BuildError, match="cryptsetup needs .* which is not in"):
        Archive().add_binary(root, "usr/sbin/cryptsetup")


# -- kernel modules against modprobe -----------------------------------------------------


@pytest.mark.parametrize("module", ["virtio_blk", "dm_crypt", "dm_verity", "overlay"])
def test_module_order_matches_modprobe(module: str) -> None:
    shown = subprocess.run(
        ["modprobe", "-S", KVER, "--show-depends", module],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    expected = [line.split()[1] for line in shown.splitlines() if line.startswith("insmod")]
    deps = parse_modules_dep(Path(f"/lib/modules/{KVER}/modules.dep").read_text())
    ours = [f"/lib/modules/{KVER}/{p}" for p in module_load_order(deps, [module])]
    assert sorted(ours) == sorted(expected)
    for i, path in enumerate(ours):  # every dependency comes before its user
        rel = path.removeprefix(f"/lib/modules/{KVER}/")
        assert all(f"/lib/modules/{KVER}/{d}" in ours[:i] for d in deps[rel])


def test_compressed_modules_are_stored_plain(tmp_path: Path) -> None:
    moddir = tmp_path / "root/lib/modules/9.9.9"
    (moddir / "kernel").mkdir(parents=True)
    ring = Path(f"/lib/modules/{KVER}/kernel/drivers/virtio/virtio_ring.ko").read_bytes()
    virtio = Path(f"/lib/modules/{KVER}/kernel/drivers/virtio/virtio.ko").read_bytes()
    (moddir / "kernel/virtio_ring.ko.xz").write_bytes(lzma.compress(ring))
    zst = subprocess.run(["zstd", "-q", "-c"], input=virtio, capture_output=True, check=True)
    (moddir / "kernel/virtio.ko.zst").write_bytes(zst.stdout)
    (moddir / "modules.dep").write_text(
        "kernel/virtio_ring.ko.xz:\nkernel/virtio.ko.zst: kernel/virtio_ring.ko.xz\n"
    )
    archive = Archive()
    order = archive.add_modules(tmp_path / "root", "9.9.9", ["virtio"])
    assert order == [
        "/lib/modules/9.9.9/kernel/virtio_ring.ko",
        "/lib/modules/9.9.9/kernel/virtio.ko",
    ]
    entries = archive.entries
    assert entries["lib/modules/9.9.9/kernel/virtio_ring.ko"].data == ring
    assert entries["lib/modules/9.9.9/kernel/virtio.ko"].data == virtio
    assert entries["lib/modules/9.9.9/kernel/virtio.ko"].kind is Kind.FILE
    assert entries["lib/modules/9.9.9/modules.dep"].data == (
        b"kernel/virtio.ko: kernel/virtio_ring.ko\nkernel/virtio_ring.ko:\n"
    )


def test_unknown_module_is_named(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="no_such_module"):
        Archive().add_modules(Path("/"), KVER, ["no_such_module"])
