"""Sealed LUKS2 volumes: keys bound to the predicted PCRs of the modes allowed to open them.

Library API for the pipeline (see docs/sealing.md):

    from builder.seal import make_volume, VolumeSpec, PolicySpec, LocalTpm, OfflineTargets
    art = make_volume(VolumeSpec("data", 64 << 20, ("normal", "admin"), FsType.EXT4),
                      predicted={"normal": {11: b"..", 17: b"..", ...}, "admin": {...}},
                      sealer=OfflineTargets([Path("srk.tpm2b_public")]), out_dir=out)

and `unseal_volume(path, tcti)` / `reseal_volume(...)` for the TPM-present side.
"""

from builder.seal.policy import Branch, SealPolicy, build_policy
from builder.seal.reseal import reseal_volume
from builder.seal.sealer import LocalTpm, OfflineTargets, ParentKind, SealedBlob, Sealer
from builder.seal.spec import FsType, PolicySpec, VolumeSpec
from builder.seal.srk import SrkAlg, read_target_srk
from builder.seal.tpm import PolicyRefused
from builder.seal.unseal import Unsealed, unseal_volume
from builder.seal.volume import TokenInfo, VolumeArtifact, make_volume

__all__ = [
    "Branch",
    "FsType",
    "LocalTpm",
    "OfflineTargets",
    "ParentKind",
    "PolicyRefused",
    "PolicySpec",
    "SealPolicy",
    "SealedBlob",
    "Sealer",
    "SrkAlg",
    "TokenInfo",
    "Unsealed",
    "VolumeArtifact",
    "VolumeSpec",
    "build_policy",
    "make_volume",
    "read_target_srk",
    "reseal_volume",
    "unseal_volume",
]
