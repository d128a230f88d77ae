"""The sealing policy: PolicyPCR per allowed mode, PolicyOR over the modes (pure).

A single mode is just its PolicyPCR digest; several modes are OR-ed, in the order the
volume lists them (PolicyOR's branch list must be replayed in that order to unseal).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from builder.banks import Bank
from builder.errors import input_error
from builder.seal.spec import PolicySpec
from builder.tpmpolicy import MAX_OR_BRANCHES, policy_or, policy_pcr

POLICY_BANK = Bank.SHA256  # session hash and the sealed object's nameAlg

Predicted = Mapping[str, Mapping[int, bytes]]


@dataclass(frozen=True)
class Branch:
    """One allowed mode: its expected PCR values and PolicyPCR digest."""

    mode: str
    pcr_values: Mapping[int, bytes]
    digest: bytes


@dataclass(frozen=True)
class SealPolicy:
    spec: PolicySpec
    branches: tuple[Branch, ...]
    digest: bytes

    @property
    def or_branches(self) -> tuple[bytes, ...]:
        """The PolicyOR list, empty for a single mode."""
        return tuple(b.digest for b in self.branches) if len(self.branches) > 1 else ()


def build_policy(predicted: Predicted, modes: Sequence[str], spec: PolicySpec) -> SealPolicy:
    """The policy that lets exactly `modes` (at their predicted PCRs) unseal."""
    if len(modes) > MAX_OR_BRANCHES:
        raise input_error(
            f"{len(modes)} modes exceed PolicyOR's {MAX_OR_BRANCHES} branches",
            field="modes",
            hint=f"allow at most {MAX_OR_BRANCHES} modes per volume",
        )
    if len(set(modes)) != len(modes):
        raise input_error(f"modes {list(modes)} name a mode twice", field="modes")
    branches = tuple(_branch(mode, predicted, spec) for mode in modes)
    if len(branches) == 1:
        return SealPolicy(spec, branches, branches[0].digest)
    return SealPolicy(
        spec, branches, policy_or([b.digest for b in branches], policy_bank=POLICY_BANK)
    )


def _branch(mode: str, predicted: Predicted, spec: PolicySpec) -> Branch:
    if mode not in predicted:
        raise input_error(
            f"no predicted PCR values for mode {mode!r}",
            field="modes",
            hint=f"predicted modes: {', '.join(sorted(predicted)) or 'none'}",
        )
    values = predicted[mode]
    missing = [p for p in spec.pcrs if p not in values]
    if missing:
        raise input_error(
            f"mode {mode!r}: no predicted value for PCR {', '.join(map(str, missing))}",
            field="pcrs",
        )
    chosen = {p: bytes(values[p]) for p in spec.pcrs}
    for pcr, value in chosen.items():
        if len(value) != spec.bank.size:
            raise input_error(
                f"mode {mode!r}: PCR {pcr} has {len(value)} bytes, {spec.bank} needs "
                f"{spec.bank.size}",
                field="pcrs",
            )
    return Branch(mode, chosen, policy_pcr(chosen, spec.bank, policy_bank=POLICY_BANK))
