"""TPM 2.0 policy digests computed offline (TPM 2.0 Part 3, PolicyPCR and PolicyOR).

tpm2-pytss's policy module needs libtss2-policy 4.0 (not in Debian 12), and these
two commands are all we need; the tests prove them against tpm2_createpolicy and
swtpm.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence

from builder.banks import Bank

TPM_CC_POLICY_PCR = 0x0000017F
TPM_CC_POLICY_OR = 0x00000171
PCR_SELECT_MIN = 3  # bytes of pcrSelect a PC Client TPM uses for 24 PCRs
MAX_OR_BRANCHES = 8


def pcr_selection_bytes(selection: Mapping[Bank, Iterable[int]]) -> bytes:
    """Marshal a TPML_PCR_SELECTION; banks in ascending algorithm-id order."""
    out = struct.pack(">I", len(selection))
    for bank in sorted(selection, key=lambda b: b.alg_id):
        bits = bytearray(PCR_SELECT_MIN)
        for pcr in selection[bank]:
            if not 0 <= pcr < 8 * PCR_SELECT_MIN:
                raise ValueError(f"PCR index {pcr} out of range 0..23")
            bits[pcr // 8] |= 1 << (pcr % 8)
        out += struct.pack(">HB", bank.alg_id, PCR_SELECT_MIN) + bytes(bits)
    return out


def policy_pcr(
    values: Mapping[int, bytes],
    pcr_bank: Bank,
    *,
    policy_bank: Bank = Bank.SHA256,
    previous: bytes | None = None,
) -> bytes:
    """PolicyPCR digest for PCRs of one bank at `values` (PCR index -> value).

    The TPM concatenates the selected PCR values in ascending index order and hashes
    them with the session's algorithm (`policy_bank`).
    """
    for pcr, value in values.items():
        if len(value) != pcr_bank.size:
            raise ValueError(
                f"PCR {pcr}: value has {len(value)} bytes, {pcr_bank} needs {pcr_bank.size}"
            )
    old = policy_bank.zero if previous is None else previous
    pcr_digest = policy_bank.hash(b"".join(values[i] for i in sorted(values)))
    sel = pcr_selection_bytes({pcr_bank: sorted(values)})
    return policy_bank.hash(old + struct.pack(">I", TPM_CC_POLICY_PCR) + sel + pcr_digest)


def policy_or(branches: Sequence[bytes], *, policy_bank: Bank = Bank.SHA256) -> bytes:
    """PolicyOR over 2..8 branch digests (a policy session starts from zeros)."""
    if not 2 <= len(branches) <= MAX_OR_BRANCHES:
        raise ValueError(f"PolicyOR takes 2 to {MAX_OR_BRANCHES} branches, got {len(branches)}")
    return policy_bank.hash(
        policy_bank.zero + struct.pack(">I", TPM_CC_POLICY_OR) + b"".join(branches)
    )
