"""The build's sealed volumes against a real swtpm: the rig's own TPM (qemu-swtpm) and an
offline target's SRK. A launch performed from the built files on that TPM reaches the
manifest's values; then the key unseals in allowed modes only, and no key lies around."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder import predict
from builder.platform import load_platform
from builder.swtpm import Swtpm
from builder.tboot.launch import launch_plan, rig_launch
from builder.tboot.mlehash import load_mle
from builder.verify import grub_entries
from tests.buildkit import actvsm, small_definition
from tests.test_launch import perform_on_swtpm, read_pcrs
from tests.test_seal_offline import make_srk


def launch_mode(tpm: Swtpm, out: Path, mode: str) -> None:
    """The late launch of `mode` as the rig performs it, from the files in `out`."""
    platform = load_platform(out / "platform.yaml")
    entry = grub_entries((out / "boot/grub/grub-bios.cfg").read_text())[mode]
    kernel = (out / "boot/vmlinuz").read_bytes()
    initrd = (out / "boot/initrd.img").read_bytes()
    plan = launch_plan(
        platform,
        mle=load_mle((out / "boot/tboot.gz").read_bytes()),
        tboot_name=predict.TBOOT_NAME,
        tboot_cmdline=entry["tboot_cmdline"],
        modules=predict.boot_modules(kernel, initrd, entry["kernel_cmdline"]),
        policy=(out / "launch/vl.pol").read_bytes(),
    )
    data, extends = rig_launch(plan)
    perform_on_swtpm(tpm, data, extends)


def unseal(tpm: Swtpm, volume: Path, key: Path) -> subprocess.CompletedProcess[str]:
    return actvsm("unseal", str(volume), "--tpm", tpm.tcti, "--key-file", str(key))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("seal")
    defn = small_definition(work)
    defn.write_text(
        defn.read_text().replace("modes: [normal]", "modes: [normal, admin]")
        + "output:\n  installer: false\n"
    )
    proc = actvsm(
        "build", "-q", str(defn), "-o", str(work / "out"), "--cache-dir", str(work / "cache")
    )
    assert proc.returncode == 0, proc.stderr
    return work / "out" / "small"


@pytest.mark.parametrize(("mode", "opens"), [("normal", True), ("admin", True), ("update", False)])
def test_rig_tpm_unseals_in_allowed_modes_only(
    built: Path, tmp_path: Path, mode: str, opens: bool
) -> None:
    state = tmp_path / "tpm"
    shutil.copytree(built / "rig/tpm", state)  # the build output stays untouched
    manifest = json.loads((built / "manifest.json").read_text())
    with Swtpm(state) as tpm:
        launch_mode(tpm, built, mode)
        # The TPM now holds exactly the manifest's PCR 17-19 for that mode.
        got = read_pcrs(tpm, (load_platform(built / "platform.yaml").banks[1],))
        want = manifest["modes"][mode]["pcrs"]["sha256"]
        assert {str(p): v.hex() for p, v in next(iter(got.values())).items()} == {
            p: want[p] for p in ("17", "18", "19")
        }
        proc = unseal(tpm, built / "volumes/data.luks", tmp_path / "key")
    if opens:
        assert proc.returncode == 0, proc.stderr
        check = subprocess.run(
            [
                "cryptsetup",
                "open",
                "--test-passphrase",
                "--key-file",
                tmp_path / "key",
                built / "volumes/data.luks",
            ],
            capture_output=True,
        )
        assert check.returncode == 0, check.stderr
    else:
        assert proc.returncode == 1
        assert not (tmp_path / "key").exists()


def test_phase_cap_closes_the_volume(built: Path, tmp_path: Path) -> None:
    shutil.copytree(built / "rig/tpm", tmp_path / "tpm")
    with Swtpm(tmp_path / "tpm") as tpm:
        launch_mode(tpm, built, "normal")
        cap = json.loads((built / "manifest.json").read_text())["modes"]["normal"]["phase_cap"][
            "event"
        ]
        subprocess.run(
            ["tpm2_pcrextend", f"{cap['pcr']}:sha256={cap['digests']['sha256']}"],
            env={"TPM2TOOLS_TCTI": tpm.tcti, "PATH": "/usr/bin:/bin"},
            check=True,
            capture_output=True,
        )
        assert unseal(tpm, built / "volumes/data.luks", tmp_path / "key").returncode == 1


def test_offline_target_srk_and_no_key_left_anywhere(tmp_path: Path) -> None:
    defn = small_definition(tmp_path)
    defn.write_text(defn.read_text() + "output:\n  installer: false\n")
    out, cache = tmp_path / "out", tmp_path / "cache"
    with Swtpm() as tpm:
        srk = make_srk(tpm, tmp_path, "ecc")
        tmp = tmp_path / "tmpdir"
        tmp.mkdir()
        proc = subprocess.run(
            [sys.executable, "-m", "builder.cli", "build", "--debug", str(defn), "-o", str(out),
             "--cache-dir", str(cache), "--target-srk", str(srk)],
            capture_output=True, text=True, timeout=900, env={**os.environ, "TMPDIR": str(tmp)},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert not (out / "small/rig").exists()
        launch_mode(tpm, out / "small", "normal")
        got = unseal(tpm, out / "small/volumes/data.luks", tmp_path / "key")
        assert got.returncode == 0, got.stderr
    key = (tmp_path / "key").read_bytes()
    assert len(key) == 32
    needles = [key, key.hex().encode(), base64.b64encode(key)]
    logs = (proc.stdout + proc.stderr).encode()
    for place in [p for root in (out, cache, tmp) for p in root.rglob("*") if p.is_file()]:
        data = place.read_bytes()
        assert not any(n in data for n in needles), f"volume key found in {place}"
    assert not any(n in logs for n in needles)
