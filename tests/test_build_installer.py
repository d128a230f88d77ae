"""The installer disk image as `actvsm build` writes it: its partitions hold exactly the
build's artifacts, its GRUB configs boot the measured command lines, and it is
reproducible from the same inputs."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from tests.buildkit import actvsm, small_definition


def partitions(image: Path) -> dict[str, tuple[int, int]]:
    """name -> (start byte, size in bytes), read by sfdisk."""
    table = json.loads(
        subprocess.run(["sfdisk", "--json", image], capture_output=True, check=True).stdout
    )
    sector = table["partitiontable"].get("sectorsize", 512)
    return {
        p["name"]: (p["start"] * sector, p["size"] * sector)
        for p in table["partitiontable"]["partitions"]
    }


def read_at(image: Path, start: int, size: int) -> bytes:
    with image.open("rb") as f:
        f.seek(start)
        return f.read(size)


def test_installer_holds_the_artifacts_and_the_measured_boot_entries(tmp_path: Path) -> None:
    defn = small_definition(tmp_path)
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = actvsm("build", "-q", str(defn), "-o", str(out), "--cache-dir", str(cache))
    assert proc.returncode == 0, proc.stderr
    small = out / "small"
    image = small / "installer.img"
    parts = partitions(image)
    assert list(parts) == [
        "bios-boot",
        "esp",
        "boot",
        "actvsm-base",
        "actvsm-verity",
        "actvsm-vol-data",
    ]
    for name, artifact in [
        ("actvsm-base", "base.squashfs"),
        ("actvsm-verity", "base.verity"),
        ("actvsm-vol-data", "volumes/data.luks"),
    ]:
        data = (small / artifact).read_bytes()
        start, size = parts[name]
        assert size >= len(data)
        assert read_at(image, start, len(data)) == data, name
    # The boot partition's GRUB config boots the same command lines as boot/grub/.
    start, size = parts["boot"]
    fs = tmp_path / "boot.ext2"
    fs.write_bytes(read_at(image, start, size))
    cfg = subprocess.run(
        ["debugfs", "-R", "cat /grub/grub-bios.cfg", fs], capture_output=True, text=True, check=True
    ).stdout
    manifest = json.loads((small / "manifest.json").read_text())
    for mode, data in manifest["modes"].items():
        assert f"module2 /vmlinuz {data['kernel_cmdline']}\n" in cfg, mode
    assert manifest["installer"]["boot_uuid"] in cfg
    # The compressed copy and the .sha256 files agree.
    unpacked = subprocess.run(
        ["zstd", "-d", "-c", small / "installer.img.zst"], capture_output=True, check=True
    )
    assert unpacked.stdout == image.read_bytes()
    for name in ("installer.img", "installer.img.zst"):
        line = (small / f"{name}.sha256").read_text()
        assert line.split()[0] == hashlib.sha256((small / name).read_bytes()).hexdigest()
        assert line.split()[1].lstrip("*") == name


def test_installer_is_reproducible_from_the_same_inputs(tmp_path: Path) -> None:
    defn = small_definition(tmp_path)
    text = defn.read_text().replace(
        "volumes:\n  - name: data\n    size: 32M\n    modes: [normal]\n", ""
    )
    defn.write_text(text)  # no volumes: nothing random in the image
    images = []
    for side in ("a", "b"):
        out = tmp_path / f"out-{side}"
        proc = actvsm(
            "build", "-q", str(defn), "-o", str(out), "--cache-dir", str(tmp_path / f"cache-{side}")
        )
        assert proc.returncode == 0, proc.stderr
        images.append((out / "small/installer.img").read_bytes())
    assert images[0] == images[1]
