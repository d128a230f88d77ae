"""The installer disk image, read back with the real tools: sfdisk, sgdisk, mtools,
debugfs, zstd and sha256sum. The pure layout code gets property tests."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from builder import disklayout, installer
from builder.disklayout import MiB, Partition
from builder.errors import InputError
from tests.installer_kit import make_inputs


def sh(*cmd: str | Path, input: bytes | None = None) -> str:
    proc = subprocess.run(
        [os.fspath(c) for c in cmd], input=input, capture_output=True, timeout=120, check=True
    )
    return proc.stdout.decode()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> installer.InstallerImage:
    work = tmp_path_factory.mktemp("installer")
    inputs = make_inputs(work / "in")
    return installer.assemble(inputs.spec, work / "out" / "installer.img")


def extract(image: Path, part: disklayout.Placed, dest: Path) -> Path:
    with open(image, "rb") as f:
        f.seek(part.start)
        dest.write_bytes(f.read(part.part.size))
    return dest


def by_label(img: installer.InstallerImage, label: str) -> disklayout.Placed:
    return next(p for p in img.partitions if p.part.label == label)


def test_two_builds_are_byte_identical(tmp_path: Path, built: installer.InstallerImage) -> None:
    # Fresh inputs (new files, other mtimes, another directory) and a later clock.
    inputs = make_inputs(tmp_path / "in")
    for src in inputs.spec.boot_files.values():
        if src.parent == tmp_path / "in":
            os.utime(src, (12345, 12345))
    time.sleep(1.1)
    again = installer.assemble(inputs.spec, tmp_path / "out" / "installer.img")
    assert again.sha256 == built.sha256
    assert again.path.read_bytes() == built.path.read_bytes()
    assert again.compressed is not None and built.compressed is not None
    assert again.compressed.read_bytes() == built.compressed.read_bytes()


def test_sfdisk_and_sgdisk_read_the_table(built: installer.InstallerImage) -> None:
    table = json.loads(sh("sfdisk", "--json", built.path))["partitiontable"]
    assert table["label"] == "gpt"
    assert table["id"].lower() == built.disk_guid
    names = [p["name"] for p in table["partitions"]]
    assert names == ["bios-boot", "esp", "boot", "actvsm-base", "actvsm-verity", "actvsm-vol-data"]
    types = {p["name"]: p["type"].upper() for p in table["partitions"]}
    assert types["bios-boot"] == "21686148-6449-6E6F-744E-656564454649"
    assert types["esp"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    for got, want in zip(table["partitions"], built.partitions, strict=True):
        assert got["start"] * 512 == want.start and got["start"] % 2048 == 0
        assert got["size"] * 512 == want.part.size
        assert got["uuid"].lower() == want.part.uuid
    assert by_label(built, "actvsm-vol-data").part.size == 4 * MiB  # 3 MiB + 9 bytes, rounded up
    printed = sh("sgdisk", "-p", built.path)
    for name in names:
        assert name in printed
    assert "EF02" in printed and "EF00" in printed
    assert "No problems found" in sh("sgdisk", "-v", built.path)


def test_mbr_points_grub_at_the_bios_boot_partition(
    built: installer.InstallerImage, tmp_path: Path
) -> None:
    data = built.path.read_bytes()[: 3 * MiB]
    boot_img = Path("/usr/lib/grub/i386-pc/boot.img").read_bytes()
    assert data[:0x5C] == boot_img[:0x5C]  # GRUB's code, not sfdisk's zeros
    assert struct.unpack_from("<Q", data, 0x5C)[0] == 2048
    assert data[0x1BE + 4] == 0xEE  # the protective MBR entry survived
    assert data[510:512] == b"\x55\xaa"
    on_disk = data[MiB : 2 * MiB]
    assert struct.unpack_from("<QHH", on_disk, 500)[0] == 2049  # core.img's 2nd sector
    inputs = make_inputs(tmp_path / "in")
    core, _ = installer.grub_images(inputs.spec.boot_uuid, tmp_path)
    made = core.read_bytes()
    assert on_disk[512 : len(made)] == made[512:]


def test_esp_holds_the_efi_grub(built: installer.InstallerImage, tmp_path: Path) -> None:
    esp = extract(built.path, by_label(built, "esp"), tmp_path / "esp.img")
    listing = sh("mdir", "-i", esp, "::EFI/BOOT")
    assert "BOOTX64" in listing and "EFI" in listing
    efi = tmp_path / "bootx64.efi"
    sh("mcopy", "-i", esp, "::EFI/BOOT/BOOTX64.EFI", efi)
    head = efi.read_bytes()[:2]
    assert head == b"MZ"
    assert 'disk type="FAT32   "' in sh("minfo", "-i", esp)


def test_boot_partition_holds_the_launch_files(
    built: installer.InstallerImage, tmp_path: Path
) -> None:
    inputs = make_inputs(tmp_path / "in")
    boot = extract(built.path, by_label(built, "boot"), tmp_path / "boot.img")
    listing = sh("debugfs", "-R", "ls -l /", boot)
    for name in ("tboot.gz", "vmlinuz", "initrd.img", "vl.pol", "provision-vlp.sh", "acm", "grub"):
        assert name in listing
    assert "grub-bios.cfg" in sh("debugfs", "-R", "ls -l /grub", boot)
    dumped = tmp_path / "tboot.gz"
    sh("debugfs", "-R", f"dump /tboot.gz {dumped}", boot)
    assert dumped.read_bytes() == Path("/boot/tboot.gz").read_bytes()
    cfg = sh("debugfs", "-R", "cat /grub/grub-uefi.cfg", boot)
    assert cfg == inputs.spec.grub_configs["uefi"]
    assert f"--set=root {inputs.spec.boot_uuid}" in cfg
    uuid_line = [ln for ln in sh("dumpe2fs", "-h", boot).splitlines() if "UUID" in ln][0]
    assert inputs.spec.boot_uuid in uuid_line
    sh("e2fsck", "-fn", boot)


def test_raw_partitions_hold_their_files(built: installer.InstallerImage, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in")
    assert inputs.spec.verity is not None
    for label, src in [
        ("actvsm-base", inputs.spec.base),
        ("actvsm-verity", inputs.spec.verity),
        ("actvsm-vol-data", inputs.spec.volumes[0][1]),
    ]:
        part = extract(built.path, by_label(built, label), tmp_path / label).read_bytes()
        content = src.read_bytes()
        assert part[: len(content)] == content
        assert part[len(content) :] == bytes(len(part) - len(content))


def test_compressed_copy_and_checksums(built: installer.InstallerImage) -> None:
    assert built.compressed is not None
    out = subprocess.run(
        ["zstd", "-dc", built.compressed], capture_output=True, timeout=120, check=True
    ).stdout
    assert hashlib.sha256(out).hexdigest() == built.sha256
    for path in (built.path, built.compressed):
        proc = subprocess.run(
            ["sha256sum", "-c", path.name + ".sha256"],
            cwd=path.parent,
            capture_output=True,
            timeout=120,
        )
        assert proc.returncode == 0 and b": OK" in proc.stdout


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "in")
    spec = inputs.spec
    cases = [
        {"grub_configs": {"bios": spec.grub_configs["bios"]}},
        {"boot_uuid": "not-a-uuid"},
        {"boot_files": {"../x": spec.base}},
        {"boot_files": {"grub/grub-bios.cfg": spec.base}},
        {"volumes": [("data", spec.base), ("data", spec.base)]},
        {"base": tmp_path / "missing"},
        {"grub_configs": {"bios": "no uuid", "uefi": "no uuid"}},
    ]
    for change in cases:
        bad = dataclasses.replace(spec, **change)  # type: ignore[arg-type]
        with pytest.raises(InputError):
            installer.assemble(bad, tmp_path / "out.img")
    assert not (tmp_path / "out.img").exists()


# -- the pure layout ---------------------------------------------------------------------

guid = st.uuids().map(str)
parts = st.lists(
    st.tuples(st.integers(1, 64), guid, guid), min_size=1, max_size=12, unique_by=lambda t: t[1]
)


@given(parts)
def test_place_aligns_and_never_overlaps(items: list[tuple[int, str, str]]) -> None:
    plist = [Partition(f"p{i}", t, n * MiB, u) for i, (n, t, u) in enumerate(items)]
    placed, size = disklayout.place(plist)
    assert placed[0].start == MiB
    for a, b in zip(placed, placed[1:], strict=False):
        assert a.end == b.start
    assert all(p.start % MiB == 0 for p in placed)
    assert size == placed[-1].end + MiB
    script = disklayout.sfdisk_script(placed, items[0][2])
    assert script.count("start=") == len(items)


@given(st.binary(min_size=512, max_size=512), st.integers(1, (1 << 64) - 1))
def test_boot_sector_keeps_the_table_and_points_at_core(mbr: bytes, lba: int) -> None:
    boot_img = Path("/usr/lib/grub/i386-pc/boot.img").read_bytes()
    out = disklayout.grub_boot_sector(boot_img, mbr, lba)
    assert len(out) == 512
    assert out[440:] == mbr[440:]
    assert struct.unpack_from("<Q", out, 0x5C)[0] == lba
    assert out[0x66:0x68] == b"\x90\x90"
    assert out[:0x5C] == boot_img[:0x5C]


@given(st.integers(2, 2000), st.integers(1, 1 << 40))
def test_core_blocklist_points_past_its_first_sector(sectors: int, lba: int) -> None:
    core = bytearray(sectors * 512 - 7)
    struct.pack_into("<QHH", core, 500, 2, sectors - 1, 0x820)
    room = 1 << 20
    if sectors * 512 > room:
        with pytest.raises(disklayout.LayoutError):
            disklayout.grub_core_image(bytes(core), lba, room)
        return
    out = disklayout.grub_core_image(bytes(core), lba, room)
    assert len(out) == sectors * 512
    assert struct.unpack_from("<QHH", out, 500) == (lba + 1, sectors - 1, 0x820)
    assert out[:500] == core[:500] and out[512 : len(core)] == core[512:]


def test_core_from_grub_mkimage_is_accepted_and_foreign_data_refused(tmp_path: Path) -> None:
    core, _ = installer.grub_images("12345678-1234-4234-8234-123456789abc", tmp_path)
    data = core.read_bytes()
    out = disklayout.grub_core_image(data, 2048, MiB)
    assert struct.unpack_from("<Q", out, 500)[0] == 2049
    with pytest.raises(disklayout.LayoutError):
        disklayout.grub_core_image(bytes(len(data)), 2048, MiB)
    with pytest.raises(disklayout.LayoutError):
        disklayout.place([Partition("a b", disklayout.ESP, MiB, disklayout.ESP)])
    shutil.rmtree(tmp_path)


def test_cli_assembles_the_same_image(built: installer.InstallerImage, tmp_path: Path) -> None:
    spec = make_inputs(tmp_path / "in").spec
    cfg = {}
    for fw, text in spec.grub_configs.items():
        cfg[fw] = tmp_path / f"grub-{fw}.cfg"
        cfg[fw].write_text(text)
    assert spec.verity is not None
    args: list[str | Path] = ["installer", "--json", "-o", tmp_path / "cli.img"]
    args += ["--name", spec.name, "--boot-uuid", spec.boot_uuid, "--epoch", str(spec.epoch)]
    args += ["--grub-bios", cfg["bios"], "--grub-uefi", cfg["uefi"]]
    args += ["--base", spec.base, "--verity", spec.verity]
    for name, path in spec.boot_files.items():
        args += ["--boot-file", f"{name}={path}"]
    for name, path in spec.volumes:
        args += ["--volume", f"{name}={path}"]
    proc = subprocess.run(
        [sys.executable, "-m", "builder.cli", *map(str, args)], capture_output=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    assert result["sha256"] == built.sha256
    assert result["compressed_sha256"] == built.compressed_sha256
    assert [p["label"] for p in result["partitions"]][:3] == ["bios-boot", "esp", "boot"]

    missing = subprocess.run(
        [sys.executable, "-m", "builder.cli", "installer", "-o", tmp_path / "x.img", "--name", "x"],
        capture_output=True,
        timeout=60,
    )
    assert missing.returncode == 2 and b"missing --grub-bios, --grub-uefi, --base" in missing.stderr
    uuid = subprocess.run(
        [sys.executable, "-m", "builder.cli", "installer", "-o", "x", "--name", "x"]
        + ["--print-boot-uuid"],
        capture_output=True,
        timeout=60,
    )
    assert uuid.stdout.decode().strip() == installer.derive_boot_uuid(b"x")
