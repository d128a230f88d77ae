"""Pure properties of the PCR engine (the swtpm comparison is in test_pcr_swtpm.py)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from builder.banks import ALL_BANKS, Bank
from builder.pcr import Event, extend, initial_value, replay

ALPHA = "abc xyz-_.:/\u00e9"
HASHLIB = {Bank.SHA1: "sha1", Bank.SHA256: "sha256", Bank.SHA384: "sha384", Bank.SHA512: "sha512"}


@st.composite
def an_event(draw: st.DrawFn) -> Event:
    banks = draw(st.lists(st.sampled_from(ALL_BANKS), min_size=1, max_size=4, unique=True))
    return Event(
        draw(st.integers(0, 23)),
        {b: draw(st.binary(min_size=b.size, max_size=b.size)) for b in banks},
        kind=draw(st.text(ALPHA, max_size=10)),
        description=draw(st.text(ALPHA, max_size=20)),
        source=draw(st.text(ALPHA, max_size=10)),
        details=draw(
            st.dictionaries(st.text(ALPHA, max_size=5), st.text(ALPHA, max_size=5), max_size=3)
        ),
        event_type=draw(st.integers(0, 2**32 - 1)),
    )


@given(st.lists(an_event(), max_size=8), st.lists(an_event(), max_size=8), st.booleans())
def test_replay_composes(a: list[Event], b: list[Event], late: bool) -> None:
    """Replaying a then b equals replaying b from a's result."""
    assert replay(a + b, late_launch=late) == replay(
        b, late_launch=late, start=replay(a, late_launch=late)
    )


@given(st.lists(an_event(), min_size=1, max_size=10))
def test_replay_is_hash_chain(evs: list[Event]) -> None:
    """Each bank's PCR is the hashlib chain over the events carrying that bank."""
    got = replay(evs, late_launch=False)
    for bank in ALL_BANKS:
        for pcr in {e.pcr for e in evs}:
            value = b"\xff" * bank.size if 17 <= pcr <= 22 else bytes(bank.size)
            for e in evs:
                if e.pcr == pcr and bank in e.digests:
                    value = hashlib.new(HASHLIB[bank], value + e.digests[bank]).digest()
            assert got[bank][pcr] == value


@given(an_event())
def test_event_json_round_trip(ev: Event) -> None:
    assert Event.from_json(ev.to_json()) == ev


def test_initial_values() -> None:
    for bank in ALL_BANKS:
        assert initial_value(17, bank, late_launch=False) == b"\xff" * bank.size
        assert initial_value(17, bank, late_launch=True) == bytes(bank.size)
        assert initial_value(23, bank, late_launch=False) == bytes(bank.size)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        extend(bytes(32), bytes(20), Bank.SHA256)
    with pytest.raises(ValueError):
        Event(3, {Bank.SHA1: bytes(32)}, "k", "d")
    with pytest.raises(ValueError):
        Event(24, {}, "k", "d")
