"""Make one sealed volume: LUKS2 image, optional content and recovery keyslot, tokens.

The library entry point for `actvsm build`:

    make_volume(spec, predicted, sealer, out_dir, policy=PolicySpec()) -> VolumeArtifact

`predicted` maps each mode to its expected PCR values ({mode: {pcr: bytes}}) in the
policy's bank; `sealer` is LocalTpm(tcti) or OfflineTargets([srk files]).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import BuildError, input_error
from builder.run import require_tool, run
from builder.seal import luks
from builder.seal.policy import Predicted, SealPolicy, build_policy
from builder.seal.sealer import SealedBlob, Sealer
from builder.seal.spec import REENCRYPT_REDUCE, FsType, PolicySpec, VolumeSpec
from builder.seal.token import make_token

SECRET_BYTES = 32
TPM_KEYSLOT = 0
RECOVERY_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"  # no 0/o, 1/i/l


@dataclass(frozen=True)
class TokenInfo:
    token_id: int
    kind: str
    parent_alg: str
    parent_name: str
    source: str


@dataclass(frozen=True)
class VolumeArtifact:
    name: str
    path: Path
    size: int
    fs: FsType
    modes: tuple[str, ...]
    policy_hash: bytes
    keyslot: int
    recovery_keyslot: int | None
    tokens: tuple[TokenInfo, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "size": self.size,
            "fs": self.fs.value,
            "modes": list(self.modes),
            "policy-hash": self.policy_hash.hex(),
            "keyslot": self.keyslot,
            "recovery-keyslot": self.recovery_keyslot,
            "tokens": [t.__dict__ for t in self.tokens],
        }


def recovery_passphrase() -> str:
    """8 groups of 5 unambiguous characters (about 198 bits)."""
    chars = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(40))
    return "-".join(chars[i : i + 5] for i in range(0, 40, 5))


def make_volume(
    spec: VolumeSpec,
    predicted: Predicted,
    sealer: Sealer,
    out_dir: Path,
    *,
    policy: PolicySpec | None = None,
) -> VolumeArtifact:
    """Write `out_dir/<name>.luks`; the random secret exists only in memory."""
    seal_policy = build_policy(predicted, spec.modes, policy or PolicySpec())
    if spec.recovery_file is not None and spec.recovery_file.exists():
        raise input_error(
            f"recovery passphrase file {spec.recovery_file} already exists",
            field=f"volumes.{spec.name}.recovery",
            hint="name a new file: actvsm never overwrites a passphrase",
        )
    final = out_dir / f"{spec.name}.luks"
    partial = out_dir / f".{spec.name}.luks.partial"
    secret = secrets.token_bytes(SECRET_BYTES)
    try:
        artifact = _build(spec, seal_policy, sealer, partial, final, secret)
        os.replace(partial, final)
        return artifact
    finally:
        partial.unlink(missing_ok=True)


def _build(
    spec: VolumeSpec,
    policy: SealPolicy,
    sealer: Sealer,
    partial: Path,
    final: Path,
    secret: bytes,
) -> VolumeArtifact:
    label = f"actvsm-{spec.name}"
    if spec.fs is FsType.EXT4:
        make_ext4(partial, spec.size, spec.content, spec.name)
        luks.encrypt_in_place(partial, secret, label)
    else:
        luks.format_volume(partial, spec.size, secret, label)
    recovery = None
    if spec.recovery_file is not None:
        recovery = add_recovery(partial, secret, spec.recovery_file)
    infos = tuple(_store(partial, policy, blob) for blob in sealer.seal(secret, policy.digest))
    if not luks.secret_opens(partial, secret, TPM_KEYSLOT):
        raise BuildError(f"volume {spec.name}: the new keyslot does not open (cryptsetup bug?)")
    return VolumeArtifact(
        spec.name,
        final,
        spec.size,
        spec.fs,
        spec.modes,
        policy.digest,
        TPM_KEYSLOT,
        recovery,
        infos,
    )


def _store(path: Path, policy: SealPolicy, blob: SealedBlob) -> TokenInfo:
    token_id = luks.import_token(path, make_token(policy, blob, TPM_KEYSLOT))
    return TokenInfo(
        token_id, blob.kind.value, blob.parent_alg.value, blob.parent_name.hex(), blob.source
    )


def make_ext4(path: Path, size: int, content: Path | None, label: str) -> None:
    """An ext4 image in the first size - REENCRYPT_REDUCE bytes of a `size`-byte file."""
    require_tool("mke2fs", "create the volume's ext4 file system")
    with open(path, "wb") as f:
        f.truncate(size)
    source: list[str | os.PathLike[str]] = ["-d", content] if content is not None else []
    run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-L", label[:16], *source, path,
         f"{(size - REENCRYPT_REDUCE) // 1024}k"],
        timeout=600,
    )  # fmt: skip


def add_recovery(path: Path, secret: bytes, target: Path) -> int:
    """Add a recovery keyslot and hand its passphrase over once, in a new 0600 file."""
    passphrase = recovery_passphrase()
    slot = luks.add_recovery_keyslot(path, secret, passphrase.encode())
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise input_error(
            f"cannot create recovery passphrase file: {exc.strerror}", file=target
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(passphrase)  # no newline: usable as --key-file as it is
    return slot
