"""CEL-JSON export: valid against a schema written from the TCG CEL spec, and replayable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from builder.banks import ALL_BANKS, Bank
from builder.cel import CelError, from_cel, to_cel
from builder.eventlog import parse, replay_log
from builder.pcr import Event, replay

DATA = Path(__file__).parent / "data" / "eventlogs"

HEX = "^([0-9a-f]{2})*$"
# TCG Canonical Event Log Format v1.0, JSON encoding: a log is an array of records;
# a record has recnum, exactly one of pcr / nv_index, digests (hashAlg + digest),
# content_type and content. PC Client content: event_type (name or number) and
# event_data (hex). Digest lengths follow the algorithm.
CEL_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "array",
    "items": {
        "type": "object",
        "required": ["recnum", "digests", "content_type", "content"],
        "additionalProperties": False,
        "properties": {
            "recnum": {"type": "integer", "minimum": 0},
            "pcr": {"type": "integer", "minimum": 0, "maximum": 23},
            "nv_index": {"type": "integer", "minimum": 0},
            "digests": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["hashAlg", "digest"],
                    "additionalProperties": False,
                    "properties": {
                        "hashAlg": {"enum": ["sha1", "sha256", "sha384", "sha512", "sm3_256"]},
                        "digest": {"type": "string", "pattern": HEX},
                    },
                    "allOf": [
                        {
                            "if": {"properties": {"hashAlg": {"const": alg}}},
                            "then": {
                                "properties": {
                                    "digest": {"minLength": 2 * size, "maxLength": 2 * size}
                                }
                            },
                        }
                        for alg, size in [
                            ("sha1", 20),
                            ("sha256", 32),
                            ("sha384", 48),
                            ("sha512", 64),
                        ]
                    ],
                },
            },
            "content_type": {"enum": ["pcclient_std", "cel", "ima_template", "ima_tlv", "systemd"]},
            "content": {"type": "object"},
        },
        "oneOf": [{"required": ["pcr"]}, {"required": ["nv_index"]}],
        "if": {"properties": {"content_type": {"const": "pcclient_std"}}},
        "then": {
            "properties": {
                "content": {
                    "required": ["event_type", "event_data"],
                    "additionalProperties": False,
                    "properties": {
                        "event_type": {
                            "oneOf": [
                                {"type": "integer", "minimum": 0, "maximum": 4294967295},
                                {"type": "string", "pattern": "^EV_[A-Z0-9_]+$"},
                            ]
                        },
                        "event_data": {"type": "string", "pattern": HEX},
                    },
                }
            }
        },
    },
}


@st.composite
def an_event(draw: st.DrawFn) -> Event:
    banks = draw(st.lists(st.sampled_from(ALL_BANKS), min_size=1, max_size=4, unique=True))
    return Event(
        draw(st.integers(0, 23)),
        {b: draw(st.binary(min_size=b.size, max_size=b.size)) for b in banks},
        kind="k",
        description=draw(st.text(max_size=30)),
        event_type=draw(st.sampled_from([0x501, 0x402, 0xD, 0x80000001, 3, 0x12345678])),
    )


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(CEL_SCHEMA)


@given(st.lists(an_event(), max_size=10))
def test_export_is_valid_cel_json_and_replays_the_same(evs: list[Event]) -> None:
    doc = json.loads(json.dumps(to_cel(evs)))
    jsonschema.validate(doc, CEL_SCHEMA)
    assert [r["recnum"] for r in doc] == list(range(len(evs)))
    back = from_cel(doc)
    assert replay(back) == replay(evs)
    assert [e.description for e in back] == [e.description for e in evs]
    assert [e.event_type for e in back] == [e.event_type for e in evs]


def test_schema_rejects_what_the_spec_forbids() -> None:
    good = to_cel([Event.measuring(4, b"x", "k", "d")])
    jsonschema.validate(good, CEL_SCHEMA)
    bad_digest = json.loads(json.dumps(good))
    bad_digest[0]["digests"][0]["digest"] = "00"
    no_index = json.loads(json.dumps(good))
    del no_index[0]["pcr"]
    for bad in (bad_digest, no_index):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, CEL_SCHEMA)


@pytest.mark.parametrize("name", ["seabios-smp1", "ovmf-smp1"])
def test_real_log_through_cel_gives_the_same_pcrs(name: str) -> None:
    log = parse((DATA / f"{name}.bin").read_bytes())
    extends = [ev.to_event() for ev in log.events if ev.extends]
    doc = to_cel(extends)
    jsonschema.validate(doc, CEL_SCHEMA)
    want = replay_log(log)
    got = replay(from_cel(doc), late_launch=False)
    for bank in ALL_BANKS:
        for pcr in want.touched[bank]:
            assert got[bank][pcr] == want.values[bank][pcr]


def test_event_types_use_pc_client_names_else_numbers() -> None:
    doc = to_cel(
        [
            Event(0, {Bank.SHA1: bytes(20)}, "k", "sep", event_type=4),
            Event(18, {Bank.SHA256: bytes(32)}, "k", "tboot", event_type=0x501),
        ]
    )
    assert doc[0]["content"]["event_type"] == "EV_SEPARATOR"
    assert doc[1]["content"]["event_type"] == 0x501


@pytest.mark.parametrize(
    "bad",
    [
        {},
        [{"pcr": 99, "content_type": "pcclient_std", "digests": []}],
        [{"pcr": 1, "content_type": "ima_template", "digests": []}],
        [{"pcr": 1, "content_type": "pcclient_std", "digests": [{"hashAlg": "md5", "digest": ""}]}],
        [
            {
                "pcr": 1,
                "content_type": "pcclient_std",
                "digests": [{"hashAlg": "sha1", "digest": "00"}],
            }
        ],
        [{"pcr": 1, "content_type": "pcclient_std", "content": {"event_type": "EV_NOPE"}}],
    ],
)
def test_reader_refuses_bad_records(bad: Any) -> None:
    with pytest.raises(CelError):
        from_cel(bad)
