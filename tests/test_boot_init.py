"""The rendered init (no QEMU): it parses as a busybox shell script, carries the
definition's volumes and the phase-cap digests, and the console parsing of `actvsm boot`.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from builder.boot import initramfs_seconds
from builder.config import load_definition
from builder.initramfs import render_init
from builder.predict import PHASE_CAP_DATA
from tests.buildkit import FULLHASH_DEF, TWO_VOLUMES_DEF


def rendered(source: Path, tmp_path: Path, fmt: str | None = None) -> str:
    text = source.read_text()
    if fmt is not None:
        text = text.replace("format: squashfs", f"format: {fmt}")
    (tmp_path / "small-tree").mkdir(exist_ok=True)
    path = tmp_path / source.name
    path.write_text(text)
    return render_init(load_definition(path), ["/lib/modules/k/a.ko", "/lib/modules/k/b.ko"])


def busybox_syntax_ok(script: str, tmp_path: Path) -> None:
    init = tmp_path / "init"
    init.write_text(script)
    busybox = shutil.which("busybox")
    assert busybox is not None
    proc = subprocess.run([busybox, "sh", "-n", init], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_init_parses_and_carries_the_definition(tmp_path: Path) -> None:
    init = rendered(TWO_VOLUMES_DEF, tmp_path)
    busybox_syntax_ok(init, tmp_path)
    assert 'open_volume data "/data" ext4' in init
    assert 'open_volume logs "/logs" ext4' in init
    assert 'case " normal admin "' in init and 'case " admin "' in init
    assert 'case " recovery "' in init  # the keyless mode
    # The cap digests are the hashes of the cap data (hashlib, not our code).
    assert f"sha256) d={hashlib.sha256(PHASE_CAP_DATA).hexdigest()} ;;" in init
    assert f"sha1) d={hashlib.sha1(PHASE_CAP_DATA).hexdigest()} ;;" in init
    assert "insmod" in init and "/lib/modules/k/a.ko /lib/modules/k/b.ko" in init


def test_init_for_erofs_and_full_hash(tmp_path: Path) -> None:
    init = rendered(FULLHASH_DEF, tmp_path, "erofs")
    busybox_syntax_ok(init, tmp_path)
    assert "mount -t erofs -o ro" in init and "1060 4" in init


def test_initramfs_seconds_from_the_stamps() -> None:
    console = (
        "[    1.0] kernel\r\nactvsm: [4.25] initramfs start\n"
        "actvsm: [6.00] base mounted (verity root hash ok)\n"
        "garbage actvsm: [x] nonsense\nactvsm: [13.75] switching root\n"
    )
    assert initramfs_seconds(console) == 9.5
    assert initramfs_seconds("actvsm: [4.25] initramfs start\n") is None
