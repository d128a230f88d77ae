"""Re-bind a volume's key to new predicted PCRs (an update's secure transition).

Run on the appliance in a mode that may open the volume now: unseal with the present
TPM, seal the same secret under the new policy (here or offline for targets), add the
new tokens, then remove the old ones. Keyslots and data stay as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from builder.errors import BuildError
from builder.seal import luks
from builder.seal.policy import Predicted, build_policy
from builder.seal.sealer import Sealer
from builder.seal.spec import PolicySpec
from builder.seal.token import make_token
from builder.seal.unseal import unseal_volume, volume_tokens
from builder.seal.volume import TokenInfo


def reseal_volume(
    path: Path,
    tcti: str,
    predicted: Predicted,
    modes: Sequence[str],
    sealer: Sealer,
    *,
    policy: PolicySpec | None = None,
) -> tuple[bytes, tuple[TokenInfo, ...]]:
    """Returns the new policy digest and tokens; old actvsm-tpm2 tokens are removed."""
    new_policy = build_policy(predicted, modes, policy or PolicySpec())
    old = [t.token_id for t in volume_tokens(path)]
    current = unseal_volume(path, tcti)
    infos = []
    for blob in sealer.seal(current.secret, new_policy.digest):
        token_id = luks.import_token(path, make_token(new_policy, blob, current.keyslot))
        infos.append(
            TokenInfo(
                token_id,
                blob.kind.value,
                blob.parent_alg.value,
                blob.parent_name.hex(),
                blob.source,
            )  # fmt: skip
        )
    if not luks.secret_opens(path, current.secret, current.keyslot):
        raise BuildError(f"{path}: keyslot {current.keyslot} no longer opens; tokens kept")
    for token_id in old:
        luks.remove_token(path, token_id)
    return new_policy.digest, tuple(infos)
