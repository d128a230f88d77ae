"""The read-only base image and its dm-verity hash tree, both reproducible.

mksquashfs is reproducible given fixed file times (`-mkfs-time`/`-all-time`, and then
no SOURCE_DATE_EPOCH: it refuses both); mkfs.erofs with `-T`, `-U` and `--all-root`.
The verity salt and UUID derive from the image's own digest, so the same image always
gets the same hash tree and root hash, and a different one never shares a salt.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError
from builder.run import require_tool, run

SQUASHFS_COMP = {"zstd": "zstd", "lz4": "lz4", "xz": "xz", "gzip": "gzip"}
VERITY_BLOCK = 4096


@dataclass(frozen=True)
class VerityInfo:
    root_hash: str
    salt: str
    uuid: str
    hash_algorithm: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int

    def to_json(self) -> dict[str, object]:
        return {
            "root_hash": self.root_hash,
            "salt": self.salt,
            "uuid": self.uuid,
            "hash_algorithm": self.hash_algorithm,
            "data_block_size": self.data_block_size,
            "hash_block_size": self.hash_block_size,
            "data_blocks": self.data_blocks,
        }


def make_squashfs(
    tree: Path, out: Path, *, compression: str, level: int, epoch: int, progress: bool
) -> None:
    require_tool("mksquashfs", "make the squashfs base image")
    cmd: list[str | os.PathLike[str]] = [
        "mksquashfs",
        tree,
        out,
        "-noappend",
        "-mkfs-time",
        str(epoch),
        "-all-time",
        str(epoch),
    ]
    if compression == "none":
        cmd += ["-noI", "-noD", "-noF", "-noX"]
    else:
        cmd += ["-comp", SQUASHFS_COMP[compression]]
        if compression == "zstd":
            cmd += ["-Xcompression-level", str(level)]
        elif compression == "gzip":
            cmd += ["-Xcompression-level", str(min(level, 9))]
    cmd += [] if progress else ["-no-progress", "-quiet"]
    _run_clean_env(cmd, capture=not progress)


def make_erofs(tree: Path, out: Path, *, compression: str, epoch: int, fs_uuid: str) -> None:
    require_tool("mkfs.erofs", "make the erofs base image")
    cmd: list[str | os.PathLike[str]] = ["mkfs.erofs", f"-T{epoch}", "-U", fs_uuid, "--all-root"]
    if compression in ("lz4", "zstd"):
        cmd += ["-zlz4hc"]  # erofs-utils 1.5 in Debian 12 has lz4 and lzma only
    elif compression == "xz":
        cmd += ["-zlzma"]
    cmd += [out, tree]
    _run_clean_env(cmd, capture=True)


def _run_clean_env(cmd: list[str | os.PathLike[str]], *, capture: bool) -> None:
    # mksquashfs refuses SOURCE_DATE_EPOCH together with -mkfs-time/-all-time.
    run(cmd, env={"SOURCE_DATE_EPOCH": None}, capture=capture, timeout=3600)


def derived_uuid(digest: bytes, purpose: str) -> str:
    """A stable RFC 4122 UUID (version 4 layout) from a content digest and a purpose."""
    import hashlib

    raw = bytearray(hashlib.sha256(purpose.encode() + b"\0" + digest).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


def verity_format(image: Path, hash_tree: Path, *, image_sha256: bytes) -> VerityInfo:
    """`veritysetup format` with salt and UUID derived from the image's sha256."""
    require_tool("veritysetup", "make the dm-verity hash tree")
    import hashlib

    salt = hashlib.sha256(b"actvsm verity salt\0" + image_sha256).hexdigest()
    vuuid = derived_uuid(image_sha256, "verity")
    proc = run(
        [
            "veritysetup",
            "format",
            image,
            hash_tree,
            "--salt",
            salt,
            "--uuid",
            vuuid,
            "--data-block-size",
            str(VERITY_BLOCK),
            "--hash-block-size",
            str(VERITY_BLOCK),
            "--hash",
            "sha256",
        ],
        timeout=1800,
    )
    return parse_verity_format(proc.stdout.decode())


def parse_verity_format(text: str) -> VerityInfo:
    fields = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z ]+):\s*(\S+)\s*$", line)
        if m:
            fields[m.group(1).strip().lower()] = m.group(2)
    try:
        return VerityInfo(
            root_hash=fields["root hash"],
            salt=fields["salt"],
            uuid=fields["uuid"],
            hash_algorithm=fields["hash algorithm"],
            data_block_size=int(fields["data block size"]),
            hash_block_size=int(fields["hash block size"]),
            data_blocks=int(fields["data blocks"]),
        )
    except KeyError as exc:
        raise BuildError(f"could not read {exc} from veritysetup's output:\n{text}") from None


def verity_verify(image: Path, hash_tree: Path, root_hash: str) -> bool:
    """True when veritysetup accepts the image with this root hash."""
    proc = run(["veritysetup", "verify", image, hash_tree, root_hash], check=False, timeout=1800)
    return proc.returncode == 0
