"""No volume key in clear: not in the output directory, the logs (--debug), nor in
files left in the temporary directory, whichever way the volume was sealed.

The key is obtained for the scan the only way it exists after a build: unsealed from
the (sw)TPM.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from builder.seal.tpm import open_tpm, read_pcrs, srk_public
from builder.swtpm import Swtpm


def actvsm(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "builder.cli", *map(str, args)],
        env=env, capture_output=True, timeout=300,
    )  # fmt: skip


def forms(key: bytes) -> list[bytes]:
    """The key as bytes, hex (both cases) and base64, as a careless log might hold it."""
    return [
        key,
        key.hex().encode(),
        key.hex().upper().encode(),
        base64.b64encode(key),
        base64.b64encode(key).rstrip(b"="),
    ]


def files_under(*roots: Path) -> list[Path]:
    return [p for r in roots for p in r.rglob("*") if p.is_file()]


@pytest.mark.parametrize("how", ["tpm", "offline"])
def test_no_key_in_out_logs_or_tmp(swtpm: Swtpm, tmp_path: Path, how: str) -> None:
    out, tmp, content = tmp_path / "out", tmp_path / "tmp", tmp_path / "content"
    for d in (out, tmp, content):
        d.mkdir()
    (content / "file.txt").write_text("some content\n")
    env = {**dict(__import__("os").environ), "TMPDIR": str(tmp)}
    with open_tpm(swtpm.tcti) as ctx:
        now = read_pcrs(ctx, "sha256:11,17,18,19")
    predicted = tmp_path / "predicted.json"
    predicted.write_text(json.dumps({"normal": {str(p): v.hex() for p, v in now.items()}}))
    where: list[str | Path] = ["--tpm", swtpm.tcti]
    if how == "offline":
        (tmp_path / "srk.pub").write_bytes(srk_public(swtpm.tcti))
        where = ["--target-srk", tmp_path / "srk.pub"]
    rec = tmp_path / "recovery.txt"
    sealed = actvsm("seal", "data", "-o", out, "--size", "40M", "--modes", "normal",
                    "--predicted", predicted, "--fs", "ext4", "--content", content,
                    "--recovery-file", rec, "--debug", *where, env=env)  # fmt: skip
    assert sealed.returncode == 0, sealed.stderr.decode()
    assert b"cryptsetup reencrypt --encrypt" in sealed.stderr  # --debug logged commands
    got = actvsm("unseal", out / "data.luks", "--tpm", swtpm.tcti, "--stdout", env=env)
    assert got.returncode == 0, got.stderr.decode()
    key = got.stdout
    assert len(key) == 32
    logs = sealed.stdout + sealed.stderr
    passphrase = rec.read_bytes()  # the recovery passphrase is not logged either
    assert len(passphrase) == 47 and passphrase not in logs
    assert all(passphrase not in p.read_bytes() for p in files_under(out, tmp))
    for form in forms(key):
        assert form not in logs
        for path in files_under(out, tmp):
            assert form not in path.read_bytes(), path
    assert files_under(tmp) == []  # nothing left behind at all
    assert sorted(p.name for p in out.iterdir()) == ["data.luks"]
