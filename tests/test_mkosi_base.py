"""The mkosi path for real (Debian's mkosi 14): reproducible across independent builds,
cached when nothing changed, rebuilt when the package list changes. Minutes, not seconds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.buildkit import actvsm

# What the boot files and the initramfs need from the base; nothing more.
PACKAGES = (
    "linux-image-amd64, tboot, cryptsetup-bin, tpm2-tools, libtss2-tcti-device0, busybox, kmod"
)
DEFINITION = """\
name: mini
base:
  distribution: debian
  release: bookworm
  packages: [{packages}]
  compression: zstd
modes:
  - name: normal
  - name: admin
  - name: update
platform: qemu-swtpm
source_date_epoch: 1700000000
"""


def stages(result: dict[str, object]) -> dict[str, bool]:
    cached = result["cached"]
    assert isinstance(cached, dict)
    return {n: cached[n] for n in ("tree", "base")}


def build(defn: Path, out: Path, cache: Path) -> dict[str, object]:
    proc = actvsm(
        "build", "--json", str(defn), "-o", str(out), "--cache-dir", str(cache), timeout=1800
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


@pytest.mark.slow
def test_mkosi_base_reproducible_cached_and_invalidated(tmp_path: Path) -> None:
    defn = tmp_path / "mini.yaml"
    defn.write_text(DEFINITION.format(packages=PACKAGES))
    packages = tmp_path / "packages"  # the .deb cache only: downloads are not what we test
    for side in ("a", "b"):
        (tmp_path / f"cache-{side}").mkdir()
        (tmp_path / f"cache-{side}" / "mkosi-packages").symlink_to(
            packages, target_is_directory=True
        )
    packages.mkdir()

    first = build(defn, tmp_path / "out-a", tmp_path / "cache-a")
    assert stages(first) == {"tree": False, "base": False}

    t0 = time.monotonic()
    again = build(defn, tmp_path / "out-a", tmp_path / "cache-a")
    assert all(again["cached"].values())  # type: ignore[attr-defined]
    assert again["artifacts"] == first["artifacts"]
    print(f"no-change rebuild: {time.monotonic() - t0:.1f}s")

    time.sleep(1.1)
    other = build(defn, tmp_path / "out-b", tmp_path / "cache-b")
    assert stages(other) == {"tree": False, "base": False}
    for name in ("base.squashfs", "base.verity"):
        a = (tmp_path / "out-a/mini" / name).read_bytes()
        assert a == (tmp_path / "out-b/mini" / name).read_bytes(), name
    assert first["verity_root_hash"] == other["verity_root_hash"]

    defn.write_text(DEFINITION.format(packages=PACKAGES + ", cpio"))
    changed = build(defn, tmp_path / "out-a", tmp_path / "cache-a")
    assert stages(changed) == {"tree": False, "base": False}
    assert changed["verity_root_hash"] != first["verity_root_hash"]
