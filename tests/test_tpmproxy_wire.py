"""The proxy's pure parts: control-message framing and the launch plan's rules."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from builder.banks import Bank
from builder.pcr import Event, replay
from builder.rig import swtpm_ctrl, tpmwire
from builder.rig.launch import LaunchPlan
from builder.rig.swtpm_ctrl import Cmd


@given(st.binary(max_size=20_000))
def test_hash_data_messages_carry_all_data_in_4k_pieces(data: bytes) -> None:
    messages = swtpm_ctrl.hash_data_messages(data)
    payload = b""
    for message in messages:
        assert swtpm_ctrl.command_code(message) == Cmd.HASH_DATA
        (length,) = struct.unpack(">I", message[4:8])
        assert 0 < length <= swtpm_ctrl.HASH_DATA_MAX and len(message) == 8 + length
        assert swtpm_ctrl.request_min_size(message) == len(message)
        payload += message[8:]
    assert payload == data


def test_request_sizes_need_the_whole_fixed_part() -> None:
    assert swtpm_ctrl.request_min_size(b"\x00\x00") is None
    assert swtpm_ctrl.request_min_size(swtpm_ctrl.request(Cmd.HASH_START)) == 4
    assert swtpm_ctrl.request_min_size(swtpm_ctrl.request(Cmd.INIT, bytes(4))) == 8
    loc = swtpm_ctrl.set_locality(3)
    assert swtpm_ctrl.locality_of(loc) == 3 and swtpm_ctrl.request_min_size(loc) == 5
    assert swtpm_ctrl.locality_of(swtpm_ctrl.request(Cmd.INIT, bytes(4))) is None
    assert swtpm_ctrl.reply_min_size(Cmd.GET_CAPABILITY) == 8
    with pytest.raises(ValueError):
        swtpm_ctrl.set_locality(5)


def test_tpm_header_size() -> None:
    command = tpmwire.pcr_extend(18, {Bank.SHA256: bytes(32)})
    assert tpmwire.message_size(command[:6]) == len(command)
    assert tpmwire.message_size(command[:5]) is None
    assert tpmwire.command_code(command) == 0x182
    with pytest.raises(tpmwire.WireError):
        tpmwire.message_size(b"\x80\x01\x00\x00\x00\x02")


def test_plan_refuses_localities_the_tpm_would_refuse() -> None:
    with pytest.raises(ValueError, match="PCR 19 cannot be extended from locality 4"):
        LaunchPlan(b"", [(4, Event.measuring(19, b"x", "k", "d"))])
    with pytest.raises(ValueError, match="locality 0"):
        LaunchPlan(b"", [(0, Event.measuring(17, b"x", "k", "d"))])


@given(st.binary(max_size=100), st.binary(max_size=100))
def test_plan_events_start_with_the_hash_end(data: bytes, extra: bytes) -> None:
    plan = LaunchPlan(data, [(2, Event.measuring(18, extra, "k", "d"))])
    values = replay(plan.events((Bank.SHA256,)), (Bank.SHA256,))[Bank.SHA256]
    h = Bank.SHA256.hash
    assert values[17] == h(bytes(32) + h(data))
    assert values[18] == h(bytes(32) + h(extra))
