"""The text inputs of `replay` (PCR files, manifests, CEL-JSON): anything gives a result
or an InputError, never another exception."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from builder.banks import ALL_BANKS, Bank
from builder.cel import CelError, from_cel, to_cel
from builder.errors import InputError
from builder.logcheck import parse_manifest_mode, parse_pcr_values
from builder.pcr import Event

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.text(alphabet='sha1256: 0x\n\tabcdefz9{}[]"#', max_size=200))
def test_pcr_file_text(text: str) -> None:
    try:
        values = parse_pcr_values(text, "p.yaml")
    except InputError:
        return
    for bank, vals in values.items():
        assert all(len(v) == bank.size and 0 <= p < 24 for p, v in vals.items())


def test_pcr_file_in_tpm2_pcrread_layout() -> None:
    text = "  sha1:\n    0 : 0x" + "AB" * 20 + "\n  sha256:\n    23: 0x" + "01" * 32 + "\n"
    assert parse_pcr_values(text, "p") == {
        Bank.SHA1: {0: b"\xab" * 20},
        Bank.SHA256: {23: b"\x01" * 32},
    }


def good_manifest() -> dict[str, Any]:
    ev = Event.measuring(18, b"k", "kernel", "kernel")
    return {
        "format": "actvsm-manifest",
        "version": 1,
        "modes": {"normal": {"events": [ev.to_json()], "pcrs": {"sha256": {"18": "00" * 32}}}},
    }


@settings(max_examples=300)
@given(
    path=st.lists(
        st.sampled_from(["modes", "normal", "events", 0, "digests", "pcrs", "sha256", "pcr"]),
        max_size=5,
    ),
    value=JSON,
)
def test_manifest_with_a_random_part(path: list[Any], value: Any) -> None:
    doc: Any = good_manifest()
    node = doc
    for key in path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
    else:
        if path:
            try:
                node[path[-1]] = value
            except (IndexError, TypeError):
                pass
        else:
            doc = value
    try:
        events, values = parse_manifest_mode(json.loads(json.dumps(doc)), "normal", "m.json")
    except InputError:
        return
    assert all(isinstance(e, Event) for e in events)


@settings(max_examples=300)
@given(JSON)
def test_cel_reader_on_random_json(doc: Any) -> None:
    try:
        from_cel(doc)
    except CelError:
        pass


def test_cel_round_trip_of_all_banks() -> None:
    ev = Event.measuring(11, b"phase", "phase", "initramfs cap")
    (back,) = from_cel(to_cel([ev]))
    assert set(back.digests) == set(ALL_BANKS) and back.digests == ev.digests


CEL_RECORD = st.fixed_dictionaries(
    {},
    optional={
        "recnum": JSON,
        "pcr": st.one_of(st.integers(-2, 30), JSON),
        "digests": st.one_of(
            JSON,
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "hashAlg": st.one_of(st.sampled_from(["sha1", "SHA256", "md5"]), JSON),
                        "digest": st.one_of(st.sampled_from(["00" * 20, "00" * 32, "zz"]), JSON),
                    },
                ),
                max_size=3,
            ),
        ),
        "content_type": st.one_of(st.just("pcclient_std"), JSON),
        "content": st.one_of(
            JSON,
            st.fixed_dictionaries(
                {},
                optional={
                    "event_type": st.one_of(st.sampled_from(["EV_IPL", "ev_ipl", "x"]), JSON),
                    "event_data": st.one_of(st.sampled_from(["", "00", "0"]), JSON),
                },
            ),
        ),
    },
)


@settings(max_examples=500)
@given(st.lists(CEL_RECORD, max_size=3))
def test_cel_reader_on_random_records(doc: list[Any]) -> None:
    try:
        from_cel(doc)
    except CelError:
        pass
