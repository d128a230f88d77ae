"""Platform profiles: strict loading, the shipped profiles, capture from a TXT event log."""

from __future__ import annotations

import hashlib
import struct
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.banks import Bank
from builder.cli import main
from builder.errors import InputError
from builder.paths import PLATFORMS
from builder.platform import (
    TXT_EVENT_TYPES,
    Extpol,
    PcrMapping,
    load_platform,
    platform_from_yaml,
)
from builder.tboot.txtlog import capture_platform, parse_tcg2_log

GOOD = """\
name: test
tpm: "2.0"
mapping: da
banks: [sha1, sha256]
hash_start:
  data: "start"
events:
  - {pcr: 17, type: BIOSAC_REG_DATA, data_hex: "00"}
  - {pcr: 17, type: MLE_HASH}
  - pcr: 18
    type: SINIT_PUBKEY_HASH
    digests: {sha1: "SHA1", sha256: "SHA256"}
""".replace("SHA1", "11" * 20).replace("SHA256", "22" * 32)


def test_shipped_profiles_load() -> None:
    names = sorted(p.stem for p in PLATFORMS.glob("*.yaml"))
    assert {"qemu-swtpm", "qemu-swtpm-legacy", "intel-purley"} <= set(names)
    for name in names:
        assert load_platform(name).name == name
    rig = load_platform("qemu-swtpm")
    assert rig.mapping is PcrMapping.DA and rig.extpol is Extpol.SHA256
    assert rig.hash_start.data is not None
    for bank in rig.banks:  # data-defined events: digest = H(data) in each bank
        assert rig.hash_start.digests is not None
        assert rig.hash_start.digests[bank] == bank.hash(rig.hash_start.data)


def test_good_profile(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(GOOD)
    p = load_platform(str(f))
    assert p.extpol is Extpol.SHA256  # tboot's default for TPM 2.0
    assert p.events[0].digests == {
        Bank.SHA1: hashlib.sha1(b"\0").digest(),
        Bank.SHA256: hashlib.sha256(b"\0").digest(),
    }
    assert p.mle_event.digests is None


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "message"),
    [
        ('tpm: "2.0"', 'tpm: "3.0"', 2, "tpm", "tpm must be one of"),
        ("mapping: da", "mapping: both", 3, "mapping", "mapping must be one of"),
        ("banks: [sha1, sha256]", "banks: [sha1, md5]", 4, "banks[1]", "unknown bank"),
        (
            "banks: [sha1, sha256]",
            "banks: [sha1, sha256]\nextpol: sha384",
            5,
            "extpol",
            "needs the sha384 bank",
        ),
        (
            '  data: "start"',
            '  data: "start"\n  data_hex: "00"',
            7,
            "hash_start.data_hex",
            "not both",
        ),
        (
            "{pcr: 17, type: BIOSAC_REG_DATA",
            "{pcr: 19, type: BIOSAC_REG_DATA",
            8,
            "events[0].pcr",
            "pcr must be 17 or 18",
        ),
        ("type: BIOSAC_REG_DATA", "type: BIOS_THING", 8, "events[0].type", "unknown SINIT event"),
        (
            "{pcr: 17, type: MLE_HASH}",
            "{pcr: 18, type: MLE_HASH}",
            9,
            "events[1].pcr",
            "MLE_HASH into PCR 17",
        ),
        (
            "{pcr: 17, type: MLE_HASH}",
            "{pcr: 17, type: MLE_HASH, data: x}",
            9,
            "events[1].type",
            "computed from tboot",
        ),
        (
            'sha256: "' + "22" * 32,
            'sha256: "' + "22" * 31,
            12,
            "events[2].digests.sha256",
            "32 bytes, not 31",
        ),
        ('sha1: "' + "11" * 20 + '", ', "", 12, "events[2].digests", r"missing for bank\(s\) sha1"),
        ("name: test", "name: test\ncolour: red", 2, "colour", "unknown field"),
        ("name: test", "name: test\nname: again", 2, "name", "duplicate key"),
    ],
)
def test_bad_profiles_name_file_line_field(
    tmp_path: Path, old: str, new: str, line: int, field: str, message: str
) -> None:
    assert old in GOOD
    f = tmp_path / "bad.yaml"
    f.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(InputError, match=message) as info:
        load_platform(str(f))
    loc = info.value.location
    assert loc is not None and loc.file == f
    assert (loc.line, loc.field) == (line, field)


def test_tpm12_profile_rules(tmp_path: Path) -> None:
    f = tmp_path / "t12.yaml"
    f.write_text(GOOD.replace('tpm: "2.0"', 'tpm: "1.2"'))
    with pytest.raises(InputError, match="sha1 bank only"):
        load_platform(str(f))
    f.write_text(
        GOOD.replace('tpm: "2.0"', 'tpm: "1.2"\nextpol: sha1')
        .replace("banks: [sha1, sha256]", "banks: [sha1]")
        .replace(', sha256: "' + "22" * 32 + '"', "")
        .replace("mapping: da", "mapping: legacy")
        .replace("{pcr: 17, type: MLE_HASH}", "{pcr: 18, type: MLE_HASH}")
    )
    p = load_platform(str(f))
    assert p.banks == (Bank.SHA1,) and p.mapping is PcrMapping.LEGACY


def test_unknown_profile_names_known_ones() -> None:
    with pytest.raises(InputError) as info:
        load_platform("no-such-board")
    assert info.value.hint is not None and "qemu-swtpm" in info.value.hint


# --- capture from a binary TCG crypto-agile event log --------------------------------

ALGS = [(0x0004, hashlib.sha1), (0x000B, hashlib.sha256)]


def _spec_id_event() -> bytes:
    body = b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(ALGS))
    body += b"".join(struct.pack("<HH", alg, h().digest_size) for alg, h in ALGS) + b"\0"
    return struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", len(body)) + body


def _event(pcr: int, etype: int, data: bytes, only: int | None = None) -> bytes:
    algs = [(a, h) for a, h in ALGS if only is None or a == only]
    out = struct.pack("<III", pcr, etype, len(algs))
    for alg, h in algs:
        out += struct.pack("<H", alg) + h(data).digest()
    return out + struct.pack("<I", len(data)) + data


def write_txt_log(path: Path, *, mle_pcr: int = 17, tboot_alg: int | None = 0x000B) -> None:
    t = TXT_EVENT_TYPES
    log = _spec_id_event()
    log += _event(0, 8, b"firmware event")  # not DRTM: ignored
    log += _event(17, t["HASH_START"], b"sinit acm")
    log += _event(17, t["BIOSAC_REG_DATA"], b"biosac")
    log += _event(mle_pcr, t["MLE_HASH"], b"")
    log += _event(18, t["SINIT_PUBKEY_HASH"], b"pubkey")
    log += _event(17, 0x501, b"tboot policy", tboot_alg)
    log += _event(18, 0x501, b"tboot policy", tboot_alg)
    path.write_bytes(log)


def test_capture_from_tcg_log(tmp_path: Path) -> None:
    log = tmp_path / "txt.bin"
    write_txt_log(log)
    # tpm2-tools reads the same bytes as a valid event log
    out = subprocess.run(["tpm2_eventlog", str(log)], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode()
    theirs = [
        (e["PCRIndex"], {d["AlgorithmId"]: d["Digest"] for d in e["Digests"]})
        for e in yaml.safe_load(out.stdout)["events"][1:]
    ]
    _banks, ours = parse_tcg2_log(log.read_bytes())
    assert theirs == [(e.pcr, {b.value: d.hex() for b, d in e.digests.items()}) for e in ours]
    p = capture_platform(log.read_bytes(), name="board", source="txt.bin")
    assert p.banks == (Bank.SHA1, Bank.SHA256)
    assert p.mapping is PcrMapping.DA and p.extpol is Extpol.SHA256
    assert p.hash_start.digests == {
        Bank.SHA1: hashlib.sha1(b"sinit acm").digest(),
        Bank.SHA256: hashlib.sha256(b"sinit acm").digest(),
    }
    assert [(e.pcr, e.name) for e in p.events] == [
        (17, "BIOSAC_REG_DATA"),
        (17, "MLE_HASH"),
        (18, "SINIT_PUBKEY_HASH"),
    ]

    legacy = tmp_path / "legacy.bin"
    write_txt_log(legacy, mle_pcr=18, tboot_alg=None)
    p2 = capture_platform(legacy.read_bytes(), name="old")
    assert p2.mapping is PcrMapping.LEGACY and p2.extpol is Extpol.EMBEDDED


def test_capture_cli_writes_loadable_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "txt.bin"
    write_txt_log(log, tboot_alg=0x0004)
    out = tmp_path / "board.yaml"
    assert main(["platform", "capture", str(log), "--name", "board", "-o", str(out)]) == 0
    p = load_platform(str(out))
    assert p.name == "board" and p.extpol is Extpol.SHA1
    assert main(["platform", "show", str(out)]) == 0
    assert "PCR 18 SINIT_PUBKEY_HASH" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "cut short"),
        (bytes(32), "not a crypto-agile"),
    ],
)
def test_capture_rejects_non_txt_logs(blob: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        capture_platform(blob, name="x")


def test_capture_needs_hash_start(tmp_path: Path) -> None:
    blob = _spec_id_event() + _event(17, TXT_EVENT_TYPES["MLE_HASH"], b"")
    with pytest.raises(InputError, match="no HASH_START"):
        capture_platform(blob, name="x")
    truncated = _spec_id_event() + _event(17, TXT_EVENT_TYPES["HASH_START"], b"abc")[:-2]
    with pytest.raises(InputError, match="cut short"):
        capture_platform(truncated, name="x")


_yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "tpm",
                    "mapping",
                    "extpol",
                    "banks",
                    "hash_start",
                    "events",
                    "pcr",
                    "type",
                    "data",
                    "data_hex",
                    "digests",
                    "sha1",
                    "x",
                ]
            ),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(doc=_yaml_values)
def test_loader_never_crashes(doc: object) -> None:
    base = yaml.safe_load(GOOD)
    for candidate in (doc, {**base, **doc} if isinstance(doc, dict) else doc):
        try:
            platform_from_yaml(candidate, Path("fuzz.yaml"))
        except InputError:
            pass


@settings(max_examples=200, deadline=None)
@given(tail=st.binary(max_size=120), head=st.booleans())
def test_capture_never_crashes(tail: bytes, head: bool) -> None:
    blob = (_spec_id_event() if head else b"") + tail
    try:
        capture_platform(blob, name="fuzz")
    except InputError:
        pass


def test_capture_event_lacking_a_bank() -> None:
    hs = _event(17, TXT_EVENT_TYPES["HASH_START"], b"acm", only=0x000B)
    with pytest.raises(InputError, match=r"HASH_START on PCR 17 lacks bank\(s\) \['sha1'\]"):
        capture_platform(_spec_id_event() + hs, name="x")
