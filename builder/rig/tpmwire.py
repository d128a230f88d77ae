"""TPM 2.0 command and response framing on the raw wire. Pure; no I/O.

Every TPM command and response starts with a 10-byte header: u16 tag, u32 total size,
u32 command code (commands) or response code (responses). The proxy splits the data
stream by that size and builds the PCR_Extend commands of the emulated late launch with
tpm2-pytss's marshalling.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from tpm2_pytss.constants import TPM2_ALG, TPM2_CC, TPM2_RH, TPM2_ST
from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMS_AUTH_COMMAND, TPMT_HA

from builder.banks import Bank

HEADER_SIZE = 10
CC_STARTUP = 0x144
MAX_MESSAGE = 1 << 20  # far above any TPM's buffer; a larger size means a broken stream


class WireError(ValueError):
    """A TPM header that cannot be right (size below the header or absurdly large)."""


def message_size(head: bytes) -> int | None:
    """Total size of the command or response starting with `head`, None if under 6 bytes."""
    if len(head) < 6:
        return None
    size = int(struct.unpack(">I", head[2:6])[0])
    if not HEADER_SIZE <= size <= MAX_MESSAGE:
        raise WireError(f"TPM message header claims {size} bytes")
    return size


def command_code(command: bytes) -> int:
    return int(struct.unpack(">I", command[6:10])[0])


def response_code(response: bytes) -> int:
    return int(struct.unpack(">I", response[6:10])[0])


def pcr_extend(pcr: int, digests: Mapping[Bank, bytes]) -> bytes:
    """TPM2_PCR_Extend(pcr) with an empty password session and one digest per bank."""
    if not 0 <= pcr <= 23:
        raise ValueError(f"PCR {pcr} out of range 0..23")
    values = []
    for bank, digest in sorted(digests.items()):
        ha = TPMT_HA(hashAlg=TPM2_ALG(bank.alg_id))
        setattr(ha.digest, bank.value, digest)
        values.append(ha)
    auth = bytes(TPMS_AUTH_COMMAND(sessionHandle=TPM2_RH.PW, sessionAttributes=0).marshal())
    body = struct.pack(">II", pcr, len(auth)) + auth + bytes(TPML_DIGEST_VALUES(values).marshal())
    header = struct.pack(">HII", int(TPM2_ST.SESSIONS), HEADER_SIZE + len(body), TPM2_CC.PCR_Extend)
    return header + body
