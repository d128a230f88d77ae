"""The base stage through the real CLI: reproducible squashfs/erofs and verity tree,
the stage cache, atomic output (a killed build), and exit statuses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.buildkit import actvsm
from tests.buildkit import small_definition as _small_definition

# Sealed volumes hold fresh random keys; the rig's TPM and the installer carry them.
RANDOM = ("volumes/", "rig/", "installer.img")


def small_definition(workdir: Path, text: str | None = None) -> Path:
    """The small definition without the installer image, which these tests do not need."""
    path = _small_definition(workdir, text)
    if "\noutput:" not in path.read_text():
        path.write_text(path.read_text() + "output:\n  installer: false\n")
    return path


def without_random(manifest: Path) -> dict[str, object]:
    data = json.loads(manifest.read_text())
    data.pop("volumes", None)
    data["artifacts"] = {k: v for k, v in data["artifacts"].items() if not k.startswith(RANDOM)}
    return dict(data)


def stages(result: dict[str, object], *names: str) -> dict[str, bool]:
    cached = result["cached"]
    assert isinstance(cached, dict)
    return {n: cached[n] for n in names}


def build(defn: Path, out: Path, cache: Path, *extra: str) -> dict[str, object]:
    proc = actvsm("build", "--json", str(defn), "-o", str(out), "--cache-dir", str(cache), *extra)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_two_builds_at_different_times_are_byte_identical(tmp_path: Path) -> None:
    a = build(small_definition(tmp_path / "a"), tmp_path / "out-a", tmp_path / "cache-a")
    time.sleep(1.1)  # the second tree gets other mtimes; the image must not care
    b = build(small_definition(tmp_path / "b"), tmp_path / "out-b", tmp_path / "cache-b")
    out_a, out_b = tmp_path / "out-a/small", tmp_path / "out-b/small"
    files = sorted(p.relative_to(out_a).as_posix() for p in out_a.rglob("*") if p.is_file())
    reproducible = [f for f in files if not f.startswith(RANDOM) and f != "manifest.json"]
    assert {"base.squashfs", "base.verity", "boot/initrd.img", "launch/vl.pol"} <= set(reproducible)
    for name in reproducible:
        assert (out_a / name).read_bytes() == (out_b / name).read_bytes(), name
    assert without_random(out_a / "manifest.json") == without_random(out_b / "manifest.json")
    assert a["verity_root_hash"] == b["verity_root_hash"]
    assert isinstance(a["verity_root_hash"], str) and len(a["verity_root_hash"]) == 64


def test_erofs_base_is_reproducible_and_verifies(tmp_path: Path) -> None:
    text = (
        (small_definition(tmp_path / "a")).read_text().replace("format: squashfs", "format: erofs")
    )
    results = []
    for side in ("a", "b"):
        defn = small_definition(tmp_path / side, text)
        results.append(build(defn, tmp_path / f"out-{side}", tmp_path / f"cache-{side}"))
    img_a = (tmp_path / "out-a/small/base.erofs").read_bytes()
    assert img_a[1024:1028] == b"\xe2\xe1\xf5\xe0"  # the erofs superblock magic, little-endian
    assert img_a == (tmp_path / "out-b/small/base.erofs").read_bytes()
    assert results[0]["verity_root_hash"] == results[1]["verity_root_hash"]


def test_veritysetup_accepts_base_and_rejects_one_flipped_byte(tmp_path: Path) -> None:
    result = build(small_definition(tmp_path), tmp_path / "out", tmp_path / "cache")
    image = tmp_path / "out/small/base.squashfs"
    tree = tmp_path / "out/small/base.verity"
    root_hash = str(result["verity_root_hash"])
    manifest = json.loads((tmp_path / "out/small/manifest.json").read_text())
    assert manifest["verity"]["root_hash"] == root_hash
    ok = subprocess.run(["veritysetup", "verify", image, tree, root_hash], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0x01
    image.write_bytes(bytes(data))
    bad = subprocess.run(["veritysetup", "verify", image, tree, root_hash], capture_output=True)
    assert bad.returncode != 0


def test_manifest_digests_match_sha_tools(tmp_path: Path) -> None:
    build(small_definition(tmp_path), tmp_path / "out", tmp_path / "cache")
    manifest = json.loads((tmp_path / "out/small/manifest.json").read_text())
    for name, entry in manifest["artifacts"].items():
        path = tmp_path / "out/small" / name
        assert entry["size"] == path.stat().st_size
        for bank in ("sha1", "sha256", "sha384", "sha512"):
            tool = subprocess.run([f"{bank}sum", path], capture_output=True, text=True, check=True)
            assert entry["digests"][bank] == tool.stdout.split()[0], (name, bank)


def test_stage_cache_reuse_and_invalidation(tmp_path: Path) -> None:
    defn = small_definition(tmp_path)
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = build(defn, out, cache)
    assert stages(first, "tree", "base", "initramfs", "seal") == {
        "tree": True,  # a prebuilt tree is used as it is
        "base": False,
        "initramfs": False,
        "seal": False,
    }
    again = build(defn, out, cache)
    assert all(stages(again, "tree", "base", "initramfs", "seal").values())
    assert again["artifacts"] == first["artifacts"]
    # Only the kernel command line changes: the base image is reused.
    defn.write_text(
        defn.read_text().replace("cmdline: console=ttyS0", "cmdline: console=ttyS0 quiet")
    )
    cmdline = build(defn, out, cache)
    assert stages(cmdline, "base", "initramfs") == {"base": True, "initramfs": True}
    # ... the PCRs change, so the volume is sealed anew (to new values, with a new key).
    assert stages(cmdline, "seal") == {"seal": False}
    # Compression changes: the base image is rebuilt.
    defn.write_text(defn.read_text().replace("compression: zstd", "compression: lz4"))
    changed = build(defn, out, cache)
    assert changed["cached"]["base"] is False  # type: ignore[index]
    assert changed["artifacts"] != first["artifacts"]
    # A file in the prebuilt tree changes: rebuilt too.
    (tmp_path / "small-tree/etc/hostname").write_text("other\n")
    assert build(defn, out, cache)["cached"]["base"] is False  # type: ignore[index]


def test_killed_build_leaves_previous_output_untouched(tmp_path: Path) -> None:
    defn = small_definition(tmp_path)
    out = tmp_path / "out"
    build(defn, out, tmp_path / "cache")
    before = {p: p.read_bytes() for p in (out / "small").rglob("*") if p.is_file()}
    # Make the base stage slow enough to be killed in the middle of it.
    (tmp_path / "small-tree/big.bin").write_bytes(os.urandom(160 << 20))
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder.cli", "build", str(defn), "-o", str(out), "--no-cache"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "base: making" in line:
            break
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    after = {p: p.read_bytes() for p in (out / "small").rglob("*") if p.is_file()}
    assert after == before
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == ["small"]
    # The next build succeeds and removes the dead build's staging directory.
    result = build(defn, out, tmp_path / "cache")
    assert result["cached"]["base"] is False  # type: ignore[index]
    assert sorted(p.name for p in out.iterdir()) == ["small"]


def test_failed_build_exits_1_and_keeps_previous_output(tmp_path: Path) -> None:
    defn = small_definition(tmp_path)
    out = tmp_path / "out"
    build(defn, out, tmp_path / "cache")
    before = (out / "small/manifest.json").read_bytes()
    (tmp_path / "broken.tar").write_bytes(b"this is not a tar archive" * 100)
    defn.write_text(defn.read_text().replace("tree: small-tree", "tarball: broken.tar"))
    proc = actvsm("build", str(defn), "-o", str(out), "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 1
    assert "tar" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "small/manifest.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["small"]


def test_progress_shows_stages_and_timing(tmp_path: Path) -> None:
    proc = actvsm(
        "build", str(small_definition(tmp_path)), "-o", str(tmp_path / "out"), "--no-cache"
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"\[ *[0-9.]+s 2/\d+\] base: making base.squashfs", proc.stderr), proc.stderr
    assert "verity: done in" in proc.stderr
    assert "built small in" in proc.stdout
