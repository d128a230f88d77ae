"""Drive a swtpm's PCRs as one boot of a mode would, for tests and benchmarks.

A `BootScript` is a late launch (swtpm's HASH_START/DATA/END at locality 4: PCR 17-22
reset to zero, PCR 17 extended with H(data)), then extends of the DRTM PCRs at
locality 2, then extends of static PCRs at locality 0. `predict` computes the values
it leads to with the PCR engine; `apply` makes the TPM go through it for real.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_SU
from tpm2_pytss.ESAPI import ESAPI
from tpm2_pytss.TCTILdr import TCTILdr
from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA

from builder.banks import ALL_BANKS, Bank
from builder.pcr import extend, initial_value
from builder.run import require_tool, run
from builder.swtpm import Swtpm

DRTM_LOCALITY = 2


@dataclass(frozen=True)
class BootScript:
    launch_data: bytes
    drtm: Sequence[tuple[int, bytes]] = field(default_factory=tuple)  # (PCR 17-19, data)
    static: Sequence[tuple[int, bytes]] = field(default_factory=tuple)  # (PCR 0-16/23, data)

    def predict(self, bank: Bank, pcrs: Sequence[int]) -> dict[int, bytes]:
        values = {p: initial_value(p, bank, late_launch=True) for p in pcrs}
        values[17] = extend(values.get(17, bank.zero), bank.hash(self.launch_data), bank)
        for pcr, data in (*self.drtm, *self.static):
            values[pcr] = extend(values.get(pcr, bank.zero), bank.hash(data), bank)
        return {p: values[p] for p in pcrs}


def late_launch(tpm: Swtpm, data: bytes) -> None:
    require_tool("swtpm_ioctl", "emulate a late launch")
    run(["swtpm_ioctl", "--tcp", f"127.0.0.1:{tpm.ctrl_port}", "-h", "-"], input=data, timeout=30)


def reboot(tpm: Swtpm) -> None:
    """A platform reset: CMD_INIT, then TPM2_Startup(CLEAR). PCRs go back to their
    power-on values (0-16: zero, 17-22: all ones); keys and seeds stay."""
    require_tool("swtpm_ioctl", "reset the emulated TPM")
    run(["swtpm_ioctl", "--tcp", f"127.0.0.1:{tpm.ctrl_port}", "-i"], timeout=30)
    ctx = ESAPI(TCTILdr("swtpm", f"host=127.0.0.1,port={tpm.port}"))
    try:
        ctx.startup(TPM2_SU.CLEAR)
    finally:
        ctx.close()


def active_banks(ctx: ESAPI) -> list[Bank]:
    _, caps = ctx.get_capability(TPM2_CAP.PCRS, 0, 1)
    banks = []
    for sel in caps.data.assignedPCR:
        if any(bytes(sel.pcrSelect)[: sel.sizeofSelect]):
            banks.append(Bank.from_alg_id(int(sel.hash)))
    return [b for b in ALL_BANKS if b in banks]


def _ha(bank: Bank, data: bytes) -> TPMT_HA:
    ha = TPMT_HA(hashAlg=TPM2_ALG(bank.alg_id))
    setattr(ha.digest, bank.value, bank.hash(data))
    return ha


def pcr_extend(tpm: Swtpm, pcr: int, data: bytes, locality: int = 0) -> None:
    """Extend `pcr` with H(data) in every active bank, at `locality`."""
    tcti = TCTILdr("swtpm", f"host=127.0.0.1,port={tpm.port}")
    ctx = ESAPI(tcti)
    try:
        digests = TPML_DIGEST_VALUES([_ha(bank, data) for bank in active_banks(ctx)])
        if locality:
            tcti.set_locality(locality)
        try:
            ctx.pcr_extend(ESYS_TR.parse(f"PCR{pcr}"), digests)
        finally:
            if locality:
                tcti.set_locality(0)
    finally:
        ctx.close()


def apply(tpm: Swtpm, script: BootScript) -> None:
    late_launch(tpm, script.launch_data)
    for pcr, data in script.drtm:
        pcr_extend(tpm, pcr, data, DRTM_LOCALITY)
    for pcr, data in script.static:
        pcr_extend(tpm, pcr, data)
