"""cryptsetup on plain image files, without device-mapper (the hosts have none).

Every secret goes to cryptsetup on stdin or on a pipe named /dev/fd/N, never in a
file. The sealed secret is a keyslot passphrase (as systemd-cryptenroll does): the
LUKS master key stays inside cryptsetup. Its keyslot uses PBKDF2 with 1000 iterations
because the secret is 256 random bits; a slow KDF would add nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from builder.errors import BuildError
from builder.run import require_tool, run
from builder.seal.spec import MIB, REENCRYPT_REDUCE

TPM_KEYSLOT_PBKDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
# The recovery passphrase is generated with about 200 bits of entropy; argon2id with a
# modest cost is defence in depth without a gigabyte of RAM per build.
RECOVERY_PBKDF = [
    "--pbkdf", "argon2id",
    "--pbkdf-memory", "65536",
    "--pbkdf-force-iterations", "4",
    "--pbkdf-parallel", "1",
]  # fmt: skip
TIMEOUT = 300.0


def cryptsetup() -> str:
    return require_tool("cryptsetup", "create and inspect LUKS2 volumes")


@contextmanager
def secret_fd(secret: bytes) -> Iterator[str]:
    """`/dev/fd/N` reading `secret` from a pipe (fits the pipe buffer: written at once)."""
    if len(secret) > 4096:
        raise ValueError("secret too large for a pipe hand-over")
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, secret)
        os.close(write_end)
        write_end = -1
        yield f"/dev/fd/{read_end}"
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def format_volume(path: Path, size: int, secret: bytes, label: str) -> None:
    """An empty LUKS2 volume of `size` bytes whose keyslot 0 opens with `secret`."""
    with open(path, "wb") as f:
        f.truncate(size)
    run(
        [cryptsetup(), "luksFormat", "--batch-mode", "--type", "luks2", "--key-slot", "0",
         *TPM_KEYSLOT_PBKDF, "--label", label, "--key-file", "-", path],
        input=secret, timeout=TIMEOUT,
    )  # fmt: skip


def encrypt_in_place(path: Path, secret: bytes, label: str) -> None:
    """Offline LUKS2 encryption of a file system image (its last REENCRYPT_REDUCE bytes
    must be unused): cryptsetup shifts the data and writes the header in front."""
    run(
        [cryptsetup(), "reencrypt", "--encrypt", "--batch-mode", "--type", "luks2",
         "--reduce-device-size", f"{REENCRYPT_REDUCE // MIB}M",
         *TPM_KEYSLOT_PBKDF, "--label", label, "--key-file", "-", path],
        input=secret, timeout=TIMEOUT,
    )  # fmt: skip


def add_recovery_keyslot(path: Path, secret: bytes, passphrase: bytes) -> int:
    """Add an argon2id keyslot for `passphrase`; returns its number."""
    before = set(keyslots(path))
    with secret_fd(secret) as existing:
        run(
            [cryptsetup(), "luksAddKey", "--batch-mode", *RECOVERY_PBKDF,
             "--key-file", existing, path, "-"],
            input=passphrase, pass_fds=[int(existing.rsplit("/", 1)[1])], timeout=TIMEOUT,
        )  # fmt: skip
    (added,) = set(keyslots(path)) - before
    return added


def metadata(path: Path) -> dict[str, Any]:
    out = run([cryptsetup(), "luksDump", "--dump-json-metadata", path], timeout=60).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def keyslots(path: Path) -> list[int]:
    return sorted(int(k) for k in metadata(path)["keyslots"])


def tokens(path: Path) -> dict[int, dict[str, Any]]:
    return {int(k): v for k, v in metadata(path)["tokens"].items()}


def import_token(path: Path, token: dict[str, Any]) -> int:
    """Store `token` in the header; returns the token id cryptsetup chose."""
    before = set(tokens(path))
    run(
        [cryptsetup(), "token", "import", "--json-file", "-", path],
        input=json.dumps(token, sort_keys=True).encode(), timeout=60,
    )  # fmt: skip
    (added,) = set(tokens(path)) - before
    return added


def remove_token(path: Path, token_id: int) -> None:
    run([cryptsetup(), "token", "remove", "--token-id", str(token_id), path], timeout=60)


def secret_opens(path: Path, secret: bytes, keyslot: int | None = None) -> bool:
    """Does `secret` open a keyslot (offline check, no mapping)?"""
    slot = [] if keyslot is None else ["--key-slot", str(keyslot)]
    proc = run(
        [cryptsetup(), "open", "--test-passphrase", *slot, "--key-file", "-", path],
        input=secret, check=False, timeout=60,
    )  # fmt: skip
    return proc.returncode == 0


def data_offset(path: Path) -> int:
    """Byte offset of the encrypted data segment."""
    offset = metadata(path)["segments"]["0"]["offset"]
    return int(offset)


def require_luks2(path: Path) -> None:
    proc = run([cryptsetup(), "isLuks", "--type", "luks2", path], check=False, timeout=30)
    if proc.returncode != 0:
        raise BuildError(f"{path} is not a LUKS2 volume")
