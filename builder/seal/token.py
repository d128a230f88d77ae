"""The LUKS2 token that carries a sealed object and its policy (pure JSON in and out).

Flat `tpm2-*` string fields are what the initramfs script reads with sed (no JSON
parser there); `actvsm-modes` is the auditor's view: per mode, the expected PCR values
and the PolicyPCR digest. docs/sealing.md describes every field.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from builder.banks import parse_bank
from builder.errors import BuildError
from builder.seal.policy import SealPolicy
from builder.seal.sealer import ParentKind, SealedBlob
from builder.seal.srk import SrkAlg

TOKEN_TYPE = "actvsm-tpm2"
FORMAT_VERSION = 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def make_token(policy: SealPolicy, blob: SealedBlob, keyslot: int) -> dict[str, Any]:
    spec = policy.spec
    return {
        "type": TOKEN_TYPE,
        "keyslots": [str(keyslot)],
        "actvsm-format": FORMAT_VERSION,
        "tpm2-pcr-bank": spec.bank.value,
        "tpm2-pcrs": list(spec.pcrs),
        "tpm2-pcr-selection": spec.selection,
        "tpm2-policy-hash": policy.digest.hex(),
        "tpm2-policy-branches": " ".join(_b64(d) for d in policy.or_branches),
        "tpm2-parent": blob.kind.value,
        "tpm2-parent-alg": blob.parent_alg.value,
        "tpm2-parent-handle": "" if blob.parent_handle is None else f"0x{blob.parent_handle:08x}",
        "tpm2-parent-name": blob.parent_name.hex(),
        "tpm2-public": _b64(blob.public),
        "tpm2-private": _b64(blob.private),
        "tpm2-seed": _b64(blob.seed),
        "actvsm-modes": [
            {
                "mode": b.mode,
                "policy-hash": b.digest.hex(),
                "pcr-values": {str(p): v.hex() for p, v in sorted(b.pcr_values.items())},
            }
            for b in policy.branches
        ],
    }


@dataclass(frozen=True)
class ParsedToken:
    """What unsealing needs from a token."""

    token_id: int
    keyslot: int
    selection: str
    policy_hash: bytes
    or_branches: tuple[bytes, ...]
    kind: ParentKind
    parent_alg: SrkAlg
    parent_name: bytes
    public: bytes
    private: bytes
    seed: bytes
    modes: tuple[tuple[str, dict[int, bytes]], ...]


def parse_token(token_id: int, obj: Mapping[str, Any]) -> ParsedToken:
    """Validate an `actvsm-tpm2` token; BuildError names the token and field at fault."""
    field = "?"
    try:
        field = "actvsm-format"
        if obj[field] != FORMAT_VERSION:
            raise ValueError(f"format {obj[field]} is not {FORMAT_VERSION}; upgrade actvsm")
        field = "tpm2-pcr-selection"
        bank_name, _, pcrs = str(obj[field]).partition(":")
        parse_bank(bank_name)
        [int(p) for p in pcrs.split(",")]
        field = "tpm2-policy-branches"
        branches = tuple(base64.b64decode(b) for b in str(obj[field]).split())
        field = "actvsm-modes"
        modes = tuple(
            (str(m["mode"]), {int(p): bytes.fromhex(v) for p, v in m["pcr-values"].items()})
            for m in obj[field]
        )
        field = "keyslots"
        (keyslot,) = (int(k) for k in obj[field])
        field = "tpm2-parent"
        return ParsedToken(
            token_id=token_id,
            keyslot=keyslot,
            selection=str(obj["tpm2-pcr-selection"]),
            policy_hash=bytes.fromhex(obj["tpm2-policy-hash"]),
            or_branches=branches,
            kind=ParentKind(obj["tpm2-parent"]),
            parent_alg=SrkAlg(obj["tpm2-parent-alg"]),
            parent_name=bytes.fromhex(obj["tpm2-parent-name"]),
            public=base64.b64decode(obj["tpm2-public"]),
            private=base64.b64decode(obj["tpm2-private"]),
            seed=base64.b64decode(obj["tpm2-seed"]),
            modes=modes,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise BuildError(
            f"LUKS2 token {token_id} ({TOKEN_TYPE}) is malformed near {field!r}: {exc}"
        ) from None
