"""swtpm's control-channel messages (upstream `include/swtpm/tpm_ioctl.h`). Pure; no I/O.

A request is a big-endian u32 command code and a body; a reply is the body only, which
starts with a u32 result for every command but GET_CAPABILITY. Each side writes a whole
message at once and waits for the answer, so a message is what one write delivers; the
proxy only needs the least size of each to know that it has all of it (swtpm rejects a
message that does not arrive whole within 500 ms).
"""

from __future__ import annotations

import struct
from enum import IntEnum


class Cmd(IntEnum):
    GET_CAPABILITY = 0x01
    INIT = 0x02
    SHUTDOWN = 0x03
    GET_TPMESTABLISHED = 0x04
    SET_LOCALITY = 0x05
    HASH_START = 0x06
    HASH_DATA = 0x07
    HASH_END = 0x08
    CANCEL_TPM_CMD = 0x09
    STORE_VOLATILE = 0x0A
    RESET_TPMESTABLISHED = 0x0B
    GET_STATEBLOB = 0x0C
    SET_STATEBLOB = 0x0D
    STOP = 0x0E
    GET_CONFIG = 0x0F
    SET_DATAFD = 0x10
    SET_BUFFERSIZE = 0x11
    GET_INFO = 0x12


HASH_DATA_MAX = 4096  # ptm_hdata.u.req.data: the most one HASH_DATA message carries


def request_min_size(head: bytes) -> int | None:
    """The least size a complete request starting with `head` has; None below 4 bytes.

    Writers pad the fixed bodies to their C union's size (QEMU sends SET_LOCALITY's
    one-byte locality in 4 bytes), so this is a lower bound: a message is whatever one
    write delivered once it reaches it, the way swtpm itself reads them.
    """
    if len(head) < 4:
        return None
    code = struct.unpack(">I", head[:4])[0]
    if code == Cmd.HASH_DATA:
        return None if len(head) < 8 else 8 + struct.unpack(">I", head[4:8])[0]
    return 4 + _REQUEST_BODY.get(code, 0)


def reply_min_size(code: int) -> int:
    """The least size of swtpm's reply to `code`: its u32 result (GET_CAPABILITY: u64)."""
    return 8 if code == Cmd.GET_CAPABILITY else 4


# Least request body sizes (after the command code) of requests that carry one.
_REQUEST_BODY = {
    Cmd.INIT: 4,
    Cmd.SET_LOCALITY: 1,
    Cmd.RESET_TPMESTABLISHED: 1,
    Cmd.GET_STATEBLOB: 12,
    Cmd.SET_STATEBLOB: 12,
    Cmd.SET_BUFFERSIZE: 4,
    Cmd.GET_INFO: 16,
}


def command_code(request: bytes) -> int:
    return int(struct.unpack(">I", request[:4])[0])


def result_of(reply: bytes) -> int:
    """The u32 result at the start of a reply (0 = success)."""
    return int(struct.unpack(">I", reply[:4])[0])


def request(cmd: Cmd, body: bytes = b"") -> bytes:
    return struct.pack(">I", cmd) + body


def set_locality(locality: int) -> bytes:
    """SET_LOCALITY with its one-byte body padded to the union's 4 bytes, as QEMU sends it."""
    if not 0 <= locality <= 4:
        raise ValueError(f"locality {locality} out of range 0..4")
    return request(Cmd.SET_LOCALITY, bytes([locality, 0, 0, 0]))


def hash_data_messages(data: bytes) -> list[bytes]:
    """HASH_DATA requests carrying `data` in pieces of at most 4096 bytes."""
    return [
        request(Cmd.HASH_DATA, struct.pack(">I", len(chunk)) + chunk)
        for chunk in (data[i : i + HASH_DATA_MAX] for i in range(0, len(data), HASH_DATA_MAX))
    ]


def locality_of(request_bytes: bytes) -> int | None:
    """The locality a SET_LOCALITY request asks for; None for any other request."""
    if command_code(request_bytes) != Cmd.SET_LOCALITY or len(request_bytes) < 5:
        return None
    return request_bytes[4]
