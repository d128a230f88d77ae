"""Who seals: a TPM that is present (`LocalTpm`) or target SRKs offline (`OfflineTargets`).

Both turn (secret, policy digest) into `SealedBlob`s, one per parent, that a token
stores. Offline sealing builds a TPM2_Duplicate-format blob with
`tpm2_pytss.utils.wrap` (no inner wrapper): the target's TPM2_Import checks it and
re-wraps it under its own SRK.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from tpm2_pytss.constants import TPM2_ALG
from tpm2_pytss.types import TPM2B_SENSITIVE
from tpm2_pytss.utils import wrap

from builder.errors import input_error
from builder.seal.srk import SRK_HANDLE, SrkAlg, TargetSrk, read_target_srk
from builder.seal.tpm import IMPORT_ATTRIBUTES, open_tpm, seal_here, storage_parent


class ParentKind(StrEnum):
    TPM = "tpm"  # created under the SRK of the TPM that sealed it
    IMPORT = "import"  # duplicate for a target SRK: TPM2_Import, then load


@dataclass(frozen=True)
class SealedBlob:
    """A sealed object and the parent it belongs to (all TPM structures marshalled)."""

    kind: ParentKind
    parent_alg: SrkAlg
    parent_name: bytes
    public: bytes  # TPM2B_PUBLIC
    private: bytes  # TPM2B_PRIVATE: the object (tpm) or the duplicate (import)
    seed: bytes = b""  # TPM2B_ENCRYPTED_SECRET, import only
    parent_handle: int | None = SRK_HANDLE
    source: str = ""  # which target file, for the report


@dataclass(frozen=True)
class LocalTpm:
    """Seal on the TPM at `tcti`, under its SRK (persistent, else the TCG primary)."""

    tcti: str
    srk_alg: SrkAlg = SrkAlg.ECC

    def seal(self, secret: bytes, policy_digest: bytes) -> list[SealedBlob]:
        with open_tpm(self.tcti) as ctx, storage_parent(ctx, self.srk_alg) as parent:
            public, private = seal_here(ctx, parent, secret, policy_digest)
            return [
                SealedBlob(
                    ParentKind.TPM, self.srk_alg, parent.name, public, private, source=self.tcti
                )
            ]


@dataclass(frozen=True)
class OfflineTargets:
    """Seal offline to each target's SRK public area: one blob (token) per target."""

    srk_files: Sequence[Path] = field(default_factory=list)
    targets: tuple[TargetSrk, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Read every file now: a bad one is an input error before any volume is made.
        if not self.srk_files:
            raise input_error("no target SRK file given", field="target-srk")
        object.__setattr__(self, "targets", tuple(read_target_srk(p) for p in self.srk_files))

    def seal(self, secret: bytes, policy_digest: bytes) -> list[SealedBlob]:
        return [self._wrap_for(t, secret, policy_digest) for t in self.targets]

    def _wrap_for(self, target: TargetSrk, secret: bytes, policy_digest: bytes) -> SealedBlob:
        sensitive, public = TPM2B_SENSITIVE.keyedhash_from_secret(
            secret, TPM2_ALG.SHA256, IMPORT_ATTRIBUTES
        )
        # The object's name covers authPolicy: set it before wrapping.
        public.publicArea.authPolicy = policy_digest
        _, duplicate, seed = wrap(target.public, public, sensitive)
        return SealedBlob(
            ParentKind.IMPORT,
            target.alg,
            target.name,
            bytes(public.marshal()),
            bytes(duplicate.marshal()),
            bytes(seed.marshal()),
            source=str(target.source),
        )


Sealer = LocalTpm | OfflineTargets
