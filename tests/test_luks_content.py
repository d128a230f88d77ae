"""Volumes with initial content, empty ext4 and raw volumes, and the recovery keyslot.

The content is read back without device-mapper: the unsealed key opens the header
(cryptsetup dumps the master key to a pipe, not a file), a COPY of the data area gets a
detached header with that master key and is decrypted offline by cryptsetup, and
debugfs reads the files.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.errors import InputError
from builder.seal import FsType, LocalTpm, VolumeSpec, make_volume, unseal_volume
from builder.seal.tpm import open_tpm, read_pcrs
from builder.swtpm import Swtpm

PCRS = "sha256:11,17,18,19"


def sh(*cmd: str | Path, input: bytes | None = None, pass_fds: tuple[int, ...] = ()) -> bytes:
    proc = subprocess.run(cmd, input=input, capture_output=True, timeout=120, pass_fds=pass_fds)
    assert proc.returncode == 0, (cmd, proc.stderr.decode())
    return proc.stdout


@pytest.fixture
def tpm() -> Iterator[Swtpm]:
    with Swtpm() as t:
        yield t


def predicted_now(tpm: Swtpm) -> dict[str, dict[int, bytes]]:
    with open_tpm(tpm.tcti) as ctx:
        return {"normal": read_pcrs(ctx, PCRS)}


def decrypt_copy(volume: Path, key: bytes, work: Path) -> Path:
    """Plain file system image of `volume`'s data area, via stock cryptsetup only."""
    meta = json.loads(sh("cryptsetup", "luksDump", "--dump-json-metadata", volume))
    seg = meta["segments"]["0"]
    dump = sh("cryptsetup", "luksDump", "--dump-volume-key", "--batch-mode",
              "--key-file", "-", volume, input=key).decode()  # fmt: skip
    hexkey = "".join(dump.split("MK dump:", 1)[1].split())
    master = bytes.fromhex(hexkey)
    data = work / "data.img"
    data.write_bytes(volume.read_bytes()[int(seg["offset"]) :])
    header = work / "detached.hdr"
    header.write_bytes(bytes(4 << 20))
    r, w = os.pipe()
    os.write(w, master)
    os.close(w)
    try:
        sh("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--header", header,
           "--offset", "0", "--sector-size", str(seg["sector_size"]), "--cipher",
           seg["encryption"], "--key-size", str(len(master) * 8), "--volume-key-file",
           f"/dev/fd/{r}", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
           "--key-file", "-", data, input=b"throw-away", pass_fds=(r,))  # fmt: skip
    finally:
        os.close(r)
    sh("cryptsetup", "reencrypt", "--decrypt", "--force-offline-reencrypt", "--batch-mode",
       "--header", header, "--key-file", "-", data, input=b"throw-away")  # fmt: skip
    return data


def debugfs_cat(image: Path, path: str) -> bytes:
    return sh("debugfs", "-R", f"cat {path}", image)


def test_initial_content_reads_back(tpm: Swtpm, tmp_path: Path) -> None:
    content = tmp_path / "content"
    (content / "etc" / "app").mkdir(parents=True)
    (content / "hello.txt").write_text("hello from the build\n")
    blob = os.urandom(200_000)
    (content / "etc" / "app" / "blob.bin").write_bytes(blob)
    out = tmp_path / "out"
    out.mkdir()
    spec = VolumeSpec("data", 48 << 20, ("normal",), FsType.EXT4, content=content)
    art = make_volume(spec, predicted_now(tpm), LocalTpm(tpm.tcti), out)
    assert art.path.stat().st_size == 48 << 20
    assert b"hello from the build" not in art.path.read_bytes()  # encrypted at rest
    key = unseal_volume(art.path, tpm.tcti).secret
    plain = decrypt_copy(art.path, key, tmp_path)
    sh("e2fsck", "-fn", plain)
    assert debugfs_cat(plain, "/hello.txt") == b"hello from the build\n"
    assert debugfs_cat(plain, "/etc/app/blob.bin") == blob


def test_empty_ext4_volume_is_formatted(tpm: Swtpm, tmp_path: Path) -> None:
    spec = VolumeSpec("scratch", 32 << 20, ("normal",), FsType.EXT4)
    art = make_volume(spec, predicted_now(tpm), LocalTpm(tpm.tcti), tmp_path)
    plain = decrypt_copy(art.path, unseal_volume(art.path, tpm.tcti).secret, tmp_path)
    sh("e2fsck", "-fn", plain)
    assert b"lost+found" in sh("debugfs", "-R", "ls /", plain)


def test_raw_volume_and_recovery_passphrase(tpm: Swtpm, tmp_path: Path) -> None:
    rec = tmp_path / "recovery.txt"
    spec = VolumeSpec("raw", 32 << 20, ("normal",), FsType.NONE, recovery_file=rec)
    art = make_volume(spec, predicted_now(tpm), LocalTpm(tpm.tcti), tmp_path)
    assert stat.S_IMODE(rec.stat().st_mode) == 0o600
    passphrase = rec.read_bytes()
    assert art.recovery_keyslot is not None and art.recovery_keyslot != art.keyslot
    sh("cryptsetup", "open", "--test-passphrase", "--key-slot", str(art.recovery_keyslot),
       "--key-file", "-", art.path, input=passphrase)  # fmt: skip
    meta = json.loads(sh("cryptsetup", "luksDump", "--dump-json-metadata", art.path))
    assert meta["keyslots"][str(art.recovery_keyslot)]["kdf"]["type"] == "argon2id"
    assert meta["keyslots"][str(art.keyslot)]["kdf"]["type"] == "pbkdf2"
    assert meta["keyslots"][str(art.keyslot)]["kdf"]["iterations"] == 1000
    key = unseal_volume(art.path, tpm.tcti).secret
    sh("cryptsetup", "open", "--test-passphrase", "--key-slot", str(art.keyslot),
       "--key-file", "-", art.path, input=key)  # fmt: skip


def test_existing_recovery_file_is_never_overwritten(tpm: Swtpm, tmp_path: Path) -> None:
    rec = tmp_path / "recovery.txt"
    rec.write_text("keep me")
    spec = VolumeSpec("raw", 32 << 20, ("normal",), recovery_file=rec)
    with pytest.raises(InputError, match="already exists"):
        make_volume(spec, predicted_now(tpm), LocalTpm(tpm.tcti), tmp_path)
    assert rec.read_text() == "keep me"
    assert not list(tmp_path.glob("*.luks*")) and not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 1 << 20}, "too small"),
        ({"modes": ()}, "no mode"),
        ({"content": Path("/nonexistent"), "fs": FsType.EXT4}, "does not exist"),
        ({"content": Path("/"), "fs": FsType.NONE}, "needs a file system"),
        ({"name": "../evil"}, "not a plain name"),
    ],
)
def test_bad_volume_specs(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"name": "v", "size": 32 << 20, "modes": ("normal",)}
    with pytest.raises(InputError, match=message):
        VolumeSpec(**{**base, **kwargs})  # type: ignore[arg-type]
