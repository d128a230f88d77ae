"""`actvsm unseal` and `actvsm seal` through the real CLI: exit statuses, what is printed."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from builder.seal.launchsim import pcr_extend
from builder.seal.tpm import open_tpm, read_pcrs
from builder.swtpm import Swtpm


def actvsm(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "builder.cli", *map(str, args)], capture_output=True, timeout=300
    )


@pytest.fixture
def sealed(swtpm: Swtpm, tmp_path: Path) -> Path:
    with open_tpm(swtpm.tcti) as ctx:
        now = read_pcrs(ctx, "sha256:11,17,18,19")
    predicted = tmp_path / "predicted.json"
    other = {**now, 18: bytes(32)}
    predicted.write_text(
        json.dumps(
            {
                m: {str(p): v.hex() for p, v in vals.items()}
                for m, vals in (("normal", now), ("admin", other))
            }
        )  # fmt: skip
    )
    proc = actvsm("seal", "vol", "-o", tmp_path, "--size", "32M", "--modes", "admin,normal",
                  "--predicted", predicted, "--tpm", swtpm.tcti, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    assert result["modes"] == ["admin", "normal"] and len(result["tokens"]) == 1
    return tmp_path / "vol.luks"


def test_unseal_prints_nothing_secret_by_default(swtpm: Swtpm, sealed: Path) -> None:
    raw = actvsm("unseal", sealed, "--tpm", swtpm.tcti, "--stdout")
    assert raw.returncode == 0 and len(raw.stdout) == 32
    plain = actvsm("unseal", sealed, "--tpm", swtpm.tcti, "--json")
    assert plain.returncode == 0
    result = json.loads(plain.stdout)
    assert result["mode"] == "normal" and result["key_file"] is None
    for blob in (plain.stdout, plain.stderr):
        assert raw.stdout not in blob and raw.stdout.hex().encode() not in blob


def test_unseal_key_file_is_new_and_0600(swtpm: Swtpm, sealed: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "key.bin"
    proc = actvsm("unseal", sealed, "--tpm", swtpm.tcti, "--key-file", key_file)
    assert proc.returncode == 0, proc.stderr.decode()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    subprocess.run(["cryptsetup", "open", "--test-passphrase", "--key-file", key_file, sealed],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    again = actvsm("unseal", sealed, "--tpm", swtpm.tcti, "--key-file", key_file)
    assert again.returncode == 2 and b"already exists" in again.stderr


def test_policy_failure_is_exit_1_with_a_clear_message(swtpm: Swtpm, sealed: Path) -> None:
    pcr_extend(swtpm, 11, b"phase cap")
    proc = actvsm("unseal", sealed, "--tpm", swtpm.tcti, "--stdout")
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert b"refused to unseal" in proc.stderr and b"mode normal: PCR 11 differs" in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_bad_inputs_are_exit_2(swtpm: Swtpm, tmp_path: Path) -> None:
    missing = actvsm("unseal", tmp_path / "nope.luks", "--tpm", swtpm.tcti)
    assert missing.returncode == 2 and b"no such volume" in missing.stderr, missing.stderr
    bad = tmp_path / "predicted.json"
    bad.write_text(json.dumps({"normal": {"11": "00"}}))
    proc = actvsm("seal", "v", "-o", tmp_path, "--size", "32M", "--modes", "normal",
                  "--predicted", bad, "--tpm", swtpm.tcti)  # fmt: skip
    assert proc.returncode == 2 and b"sha256 values have 32" in proc.stderr
    assert b"Traceback" not in proc.stderr
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"normal": {str(p): "00" * 32 for p in (11, 17, 18, 19)}}))
    srk = tmp_path / "srk.pub"
    srk.write_bytes(os.urandom(40))
    proc = actvsm("seal", "v", "-o", tmp_path, "--size", "32M", "--modes", "normal",
                  "--predicted", good, "--target-srk", srk)  # fmt: skip
    assert proc.returncode == 2 and b"srk.pub: not a TPM public area" in proc.stderr
    proc = actvsm("seal", "v", "-o", tmp_path, "--size", "32M", "--modes", "update",
                  "--predicted", good, "--tpm", swtpm.tcti)  # fmt: skip
    assert proc.returncode == 2 and b"no predicted PCR values for mode 'update'" in proc.stderr
    assert not list(tmp_path.glob("*.luks")) and not list(tmp_path.glob(".*.partial"))


def test_not_a_luks_volume_fails_cleanly(swtpm: Swtpm, tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(bytes(1 << 20))
    proc = actvsm("unseal", junk, "--tpm", swtpm.tcti)
    assert proc.returncode == 1 and b"not a LUKS2 volume" in proc.stderr, proc.stderr
