"""Unseal a volume's key with the TPM present: the admin's and the tests' path.

For each `actvsm-tpm2` token whose parent is this TPM's SRK: (import,) load, then a
policy session replays PolicyPCR over the current PCRs and PolicyOR over the token's
branch list; the TPM alone decides. On refusal we compare the PCRs with each mode's
expected values to say which PCR differs (the TPM does not say).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError
from builder.seal import luks
from builder.seal.sealer import ParentKind
from builder.seal.token import TOKEN_TYPE, ParsedToken, parse_token
from builder.seal.tpm import (
    PolicyRefused,
    import_here,
    open_tpm,
    read_pcrs,
    storage_parent,
    unseal_here,
)


@dataclass(frozen=True)
class Unsealed:
    secret: bytes
    token_id: int
    keyslot: int
    mode: str | None  # the allowed mode whose PCRs the TPM has now


def volume_tokens(path: Path, token_id: int | None = None) -> list[ParsedToken]:
    luks.require_luks2(path)
    found = [
        parse_token(tid, tok)
        for tid, tok in sorted(luks.tokens(path).items())
        if tok.get("type") == TOKEN_TYPE and token_id in (None, tid)
    ]
    if not found:
        which = f"{TOKEN_TYPE} token {token_id}" if token_id is not None else f"{TOKEN_TYPE} token"
        raise BuildError(
            f"{path} has no {which}",
            hint="list the tokens with: cryptsetup luksDump " + str(path),
        )
    return found


def matching_mode(
    modes: Sequence[tuple[str, Mapping[int, bytes]]], current: Mapping[int, bytes]
) -> str | None:
    for mode, values in modes:
        if all(current.get(p) == v for p, v in values.items()):
            return mode
    return None


def explain(modes: Sequence[tuple[str, Mapping[int, bytes]]], current: Mapping[int, bytes]) -> str:
    """One line per allowed mode naming the PCRs that differ from its expected values."""
    lines = []
    for mode, values in modes:
        off = [str(p) for p, v in sorted(values.items()) if current.get(p) != v]
        what = f"PCR {off[0]} differs" if len(off) == 1 else f"PCRs {', '.join(off)} differ"
        lines.append(f"mode {mode}: {what}" if off else f"mode {mode}: PCRs match")
    return "; ".join(lines)


def unseal_volume(path: Path, tcti: str, token_id: int | None = None) -> Unsealed:
    """The volume key, or PolicyRefused (exit 1) when the PCRs fit no allowed mode."""
    tokens = volume_tokens(path, token_id)
    refused: list[str] = []
    with open_tpm(tcti) as ctx:
        for tok in tokens:
            with storage_parent(ctx, tok.parent_alg, tok.parent_name) as parent:
                if parent.name != tok.parent_name:
                    continue
                private = tok.private
                if tok.kind is ParentKind.IMPORT:
                    private = import_here(ctx, parent, tok.public, tok.private, tok.seed)
                current = read_pcrs(ctx, tok.selection)
                try:
                    secret = unseal_here(
                        ctx, parent, tok.public, private, tok.selection, tok.or_branches
                    )
                except PolicyRefused:
                    refused.append(f"token {tok.token_id}: {explain(tok.modes, current)}")
                    continue
            if not luks.secret_opens(path, secret, tok.keyslot):
                raise BuildError(
                    f"token {tok.token_id} unsealed, but its key does not open keyslot "
                    f"{tok.keyslot} of {path}"
                )
            return Unsealed(secret, tok.token_id, tok.keyslot, matching_mode(tok.modes, current))
    if not refused:
        raise BuildError(
            f"no token of {path.name} is sealed for this TPM's storage key",
            hint="seal the volume for this TPM (actvsm seal --tpm, or --target-srk with "
            "its SRK public area)",
        )
    raise PolicyRefused(
        "the TPM refused to unseal: its PCRs match no mode allowed to open "
        f"{path.name} ({'; '.join(refused)})",
        hint="boot an allowed mode; after the phase cap (PCR 11 extended) no unseal works",
    )
