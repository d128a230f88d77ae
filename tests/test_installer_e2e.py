"""The pipeline's installer disk image, booted end to end through the firmware.

`actvsm build` of the small test image, then `installer.img` booted by the rig as a
machine boots a USB stick: SeaBIOS and OVMF, GRUB (the mode chosen in the GRUB
environment block, as an admin would), tboot (no TXT in QEMU; the rig's emulated late
launch, computed from the files in the image), the kernel, the real initramfs (which
finds the base, verity tree and volume by GPT partition name: the disk has no virtio
serials) and the workload. The judges: swtpm for the PCRs the guest reads back, the
TPM's policy check for the volume key, debugfs and grub-editenv for the environment
block. One guest at a time.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from builder.banks import Bank
from builder.errors import InputError
from builder.rig.console import parse_pcrs
from builder.rig.installer_boot import (
    GRUBENV_PATH,
    BootPartition,
    boot_installer,
    select_mode,
)
from builder.rig.qemu import BootSpec, Disk, overlay_disk, qemu_argv
from builder.tboot.grub import MODE_VARIABLE, parse_grubenv
from tests.buildkit import actvsm, small_definition

BANKS = (Bank.SHA1, Bank.SHA256)
TIMEOUT = 180.0


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("small-installer")
    defn = small_definition(work)
    actvsm("build", str(defn), "-o", str(work / "out"), "--no-cache", check=True)
    return work / "out" / "small"


def digests(out: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}


def expected_pcrs(out: Path, mode: str) -> dict[Bank, dict[int, bytes]]:
    """The manifest's prediction for `mode`: PCR 17-19, and PCR 11 after the phase cap."""
    m: dict[str, Any] = json.loads((out / "manifest.json").read_text())["modes"][mode]
    want: dict[Bank, dict[int, bytes]] = {}
    for bank in BANKS:
        values = {int(p): bytes.fromhex(v) for p, v in m["pcrs"][bank.value].items()}
        after = m["phase_cap"]["pcrs_after"][bank.value]
        values |= {int(p): bytes.fromhex(v) for p, v in after.items()}
        want[bank] = {p: values[p] for p in (11, 17, 18, 19)}
    return want


def lines_with(console: str, prefix: str) -> list[str]:
    return [ln.split(prefix, 1)[1].strip() for ln in console.splitlines() if prefix in ln]


def test_the_mode_is_chosen_in_grubenv_of_an_overlay(small: Path, tmp_path: Path) -> None:
    image = small / "installer.img"
    before = digests(small)
    boot_part = BootPartition(image)
    shipped = boot_part.read(GRUBENV_PATH, tmp_path / "shipped")
    assert parse_grubenv(shipped) == {}  # the build's default entry until an admin picks
    overlay = overlay_disk(image, tmp_path / "disk.qcow2")
    select_mode(image, overlay.path, "admin")
    select_mode(image, overlay.path, "update")  # rewritten in place, not appended
    # Read back through other tools: qemu-img flattens the overlay, debugfs reads the
    # ext2 file, grub-editenv parses the block.
    flat = tmp_path / "flat.img"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", overlay.path, flat], check=True, timeout=120
    )
    env = BootPartition(flat).read(GRUBENV_PATH, tmp_path / "grubenv")
    assert parse_grubenv(env) == {MODE_VARIABLE: "update"}
    listed = subprocess.run(
        ["grub-editenv", tmp_path / "grubenv", "list"], capture_output=True, check=True, timeout=30
    )
    assert listed.stdout.decode().splitlines() == [f"{MODE_VARIABLE}=update"]
    check = subprocess.run(
        ["e2fsck", "-fn", f"{flat}?offset={boot_part.span.offset}"],
        capture_output=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    # Only that block differs from the image; the build output is untouched.
    with open(image, "rb") as a, open(flat, "rb") as b:
        changed = [
            i for i in range(0, image.stat().st_size, 1 << 20) if a.read(1 << 20) != b.read(1 << 20)
        ]
    assert len(changed) == 1
    assert digests(small) == before


@pytest.mark.qemu
@pytest.mark.parametrize(
    ("firmware", "mode"),
    [("bios", "normal"), ("bios", "admin"), ("uefi", "admin"), ("uefi", "normal")],
)
def test_installer_boots_through_the_firmware(
    small: Path, tmp_path: Path, firmware: str, mode: str
) -> None:
    before = digests(small)
    if (firmware, mode) == ("uefi", "admin"):  # this one through the CLI
        argv = ["boot", "--json", "--installer", str(small), "--mode", mode]
        argv += ["--firmware", firmware, "--timeout", str(TIMEOUT)]
        proc = actvsm(*argv, timeout=TIMEOUT + 60)
        result = json.loads(proc.stdout)
        console = proc.stderr
        assert proc.returncode == 0 and result["ok"], console[-4000:]
        assert result["proxy_errors"] == [] and result["launches"] == 1
    else:
        rep = boot_installer(small, mode, firmware, tmp_path / "state", TIMEOUT)
        console = rep.console
        assert rep.ok, console[-4000:]
        assert rep.proxy_errors == [] and rep.launches == 1
    # GRUB ran the chosen entry (the build's default is normal: admin proves grubenv).
    assert f"actvsm: measured launch, mode {mode}" in console
    assert "TBOOT: transfering control to kernel" in console
    efi = "TBOOT: EFI memmap:" in console
    assert efi == (firmware == "uefi")
    assert lines_with(console, "ACTVSM-MODE") == [mode]
    [pcrs] = parse_pcrs(console)
    assert pcrs == expected_pcrs(small, mode)
    [mapped] = lines_with(console, "ACTVSM-MAPPED")
    if mode == "normal":
        assert set(mapped.split()) == {"actvsm-base", "actvsm-data"}
        assert "actvsm: volume data opened" in console
    else:
        assert set(mapped.split()) == {"actvsm-base"}
        assert "actvsm: volume data stays closed in mode admin" in console
    assert digests(small) == before  # the guest wrote into the overlay only


def test_bad_requests_are_input_errors(small: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="mode .nosuch. is not in"):
        boot_installer(small, "nosuch", "bios", tmp_path / "s1", TIMEOUT)
    with pytest.raises(InputError, match="bios or uefi"):
        boot_installer(small, "normal", "coreboot", tmp_path / "s2", TIMEOUT)
    with pytest.raises(InputError, match="no manifest.json"):
        boot_installer(tmp_path, "normal", "bios", tmp_path / "s3", TIMEOUT)
    not_a_disk = tmp_path / "out"
    not_a_disk.mkdir()
    (not_a_disk / "manifest.json").write_text((small / "manifest.json").read_text())
    with pytest.raises(InputError, match="no installer.img"):
        boot_installer(not_a_disk, "normal", "bios", tmp_path / "s4", TIMEOUT)
    (not_a_disk / "installer.img").write_bytes(bytes(1 << 20))
    with pytest.raises(InputError, match="partition"):
        boot_installer(not_a_disk, "normal", "bios", tmp_path / "s5", TIMEOUT)


def test_firmware_boot_argv(tmp_path: Path) -> None:
    """No kernel: no -kernel/-initrd/-append, the first disk is the boot device; a
    direct kernel boot keeps its arguments."""
    disk = Disk(tmp_path / "d.qcow2", "qcow2")
    fw = qemu_argv("qemu", BootSpec(kernel=None, disks=[disk, disk]), tmp_path, tpm_socket=None)
    assert not {"-kernel", "-initrd", "-append"} & set(fw)
    devices = [fw[i + 1] for i, a in enumerate(fw) if a == "-device"]
    assert devices == ["virtio-blk-pci,drive=disk0,bootindex=0", "virtio-blk-pci,drive=disk1"]
    direct = qemu_argv(
        "qemu",
        BootSpec(tmp_path / "k", tmp_path / "i", "x=1", disks=[disk]),
        tmp_path,
        tpm_socket=None,
    )
    assert direct[direct.index("-kernel") + 1] == str(tmp_path / "k")
    assert "bootindex" not in " ".join(direct)
    with pytest.raises(ValueError, match="takes no initrd"):
        qemu_argv("qemu", BootSpec(None, tmp_path / "i", disks=[disk]), tmp_path, tpm_socket=None)
    with pytest.raises(ValueError, match="and a disk"):
        qemu_argv("qemu", BootSpec(None), tmp_path, tpm_socket=None)


def test_cli_without_an_installer_image_is_bad_input(small: Path, tmp_path: Path) -> None:
    out = tmp_path / "small"
    shutil.copytree(small, out)
    for image in out.glob("installer.img*"):
        image.unlink()
    proc = actvsm("boot", "--installer", str(out))
    assert proc.returncode == 2 and "has no installer.img" in proc.stderr
