"""The initramfs unseal script under busybox: only busybox applets, tpm2-tools and
cryptsetup on PATH, `busybox sh` as the shell, against swtpm."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from builder.seal import LocalTpm, OfflineTargets, VolumeSpec, make_volume, unseal_volume
from builder.seal.launchsim import pcr_extend
from builder.seal.script import unseal_script
from builder.seal.srk import SrkAlg
from builder.seal.tpm import open_tpm, read_pcrs, srk_public
from builder.swtpm import Swtpm

BUSYBOX = "/bin/busybox"
APPLETS = ("base64", "cat", "mktemp", "mv", "od", "printf", "rm", "sed", "sh", "tr")
TOOLS = (
    "cryptsetup", "tpm2_createprimary", "tpm2_flushcontext", "tpm2_import", "tpm2_load",
    "tpm2_policyor", "tpm2_policypcr", "tpm2_readpublic", "tpm2_sessionconfig",
    "tpm2_startauthsession", "tpm2_unseal",
)  # fmt: skip


def initramfs_path(d: Path) -> Path:
    """A bin directory as the initramfs has it: busybox applets plus the real tools."""
    bin_dir = d / "bin"
    bin_dir.mkdir()
    for applet in APPLETS:
        (bin_dir / applet).symlink_to(BUSYBOX)
    for tool in TOOLS:
        real = shutil.which(tool)
        assert real is not None, tool
        (bin_dir / tool).symlink_to(real)
    return bin_dir


def run_script(tpm: Swtpm, d: Path, volume: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    script = d / "unseal.sh"
    script.write_text(unseal_script())
    env = {"PATH": str(d / "bin"), "TPM2TOOLS_TCTI": tpm.tcti, "TMPDIR": str(d / "tmp")}
    return subprocess.run(
        [BUSYBOX, "sh", script, volume, *args], env=env, capture_output=True, timeout=120
    )


@pytest.mark.parametrize("how", ["tpm", "offline-rsa"])
def test_busybox_script_unseals_then_refuses_after_cap(
    swtpm: Swtpm, tmp_path: Path, how: str
) -> None:
    initramfs_path(tmp_path)
    (tmp_path / "tmp").mkdir()
    with open_tpm(swtpm.tcti) as ctx:
        now = read_pcrs(ctx, "sha256:11,17,18,19")
    other = {**now, 19: bytes(32)}
    if how == "tpm":
        sealer: LocalTpm | OfflineTargets = LocalTpm(swtpm.tcti)
    else:
        (tmp_path / "srk").write_bytes(srk_public(swtpm.tcti, SrkAlg.RSA))
        sealer = OfflineTargets([tmp_path / "srk"])
    spec = VolumeSpec("bb", 32 << 20, ("other", "normal"))
    art = make_volume(spec, {"normal": now, "other": other}, sealer, tmp_path)
    ok = run_script(swtpm, tmp_path, art.path)
    assert ok.returncode == 0, ok.stderr.decode()
    assert ok.stdout == unseal_volume(art.path, swtpm.tcti).secret
    assert list((tmp_path / "tmp").iterdir()) == []  # its work directory is gone
    assert run_script(swtpm, tmp_path, art.path, "7").returncode == 2  # no such token
    pcr_extend(swtpm, 11, b"phase cap")
    capped = run_script(swtpm, tmp_path, art.path)
    assert capped.returncode == 1 and capped.stdout == b""
    assert b"refused the policy" in capped.stderr


def test_busybox_script_without_token_is_exit_2(swtpm: Swtpm, tmp_path: Path) -> None:
    initramfs_path(tmp_path)
    (tmp_path / "tmp").mkdir()
    plain = tmp_path / "plain.luks"
    plain.write_bytes(bytes(32 << 20))
    subprocess.run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf",
                    "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", "-", plain],
                   input=b"pw", check=True, capture_output=True, timeout=60)  # fmt: skip
    proc = run_script(swtpm, tmp_path, plain)
    assert proc.returncode == 2 and b"no actvsm-tpm2 token" in proc.stderr
