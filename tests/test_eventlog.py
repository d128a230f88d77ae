"""Event log parsing and replay against tpm2_eventlog, the guest's TPM, and bad input.

The logs in tests/data/eventlogs/ were captured by tools/capture-eventlog from QEMU
guests (SeaBIOS and OVMF firmware, swtpm TPM); next to each is the PCR values the
guest kernel read from that TPM (`*.pcrs.yaml`).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from builder.banks import ALL_BANKS, Bank
from builder.errors import InputError
from builder.eventlog import EventLog, parse, replay_log
from builder.run import run

DATA = Path(__file__).parent / "data" / "eventlogs"
LOGS = sorted(DATA.glob("*.bin"))
SM3_256 = 0x0012


# --- a small, independent encoder of the TCG structures (spec: PC Client PFP) ---


def spec_id_event(algs: list[tuple[int, int]], vendor: bytes = b"") -> bytes:
    data = (
        b"Spec ID Event03\0"
        + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(algs))
        + b"".join(struct.pack("<HH", a, s) for a, s in algs)
        + bytes([len(vendor)])
        + vendor
    )
    return struct.pack("<II", 0, 3) + bytes(20) + struct.pack("<I", len(data)) + data


def event2(pcr: int, etype: int, digests: list[tuple[int, bytes]], data: bytes) -> bytes:
    out = struct.pack("<III", pcr, etype, len(digests))
    out += b"".join(struct.pack("<H", a) + d for a, d in digests)
    return out + struct.pack("<I", len(data)) + data


def legacy_event(pcr: int, etype: int, digest: bytes, data: bytes) -> bytes:
    return struct.pack("<II", pcr, etype) + digest + struct.pack("<I", len(data)) + data


BANK_ALGS = [(b.alg_id, b.size) for b in ALL_BANKS]


def measured(pcr: int, data: bytes, etype: int = 0xD, banks: tuple[Bank, ...] = ALL_BANKS) -> bytes:
    return event2(pcr, etype, [(b.alg_id, b.hash(data)) for b in banks], data)


# --- reading tpm2_eventlog's and the guest's PCR values ---


def parse_pcr_lines(text: str) -> dict[Bank, dict[int, bytes]]:
    """`bank:` headers followed by `N : 0xHEX` lines (tpm2_eventlog, tpm2_pcrread, sysfs dump)."""
    out: dict[Bank, dict[int, bytes]] = {}
    bank = None
    for line in text.splitlines():
        m = re.match(r"^\s*(sha1|sha256|sha384|sha512|sm3_256):\s*$", line)
        if m:
            bank = Bank(m.group(1)) if m.group(1) != "sm3_256" else None
            if bank is not None:
                out[bank] = {}
            continue
        m = re.match(r"^\s+(\d+)\s*:\s*0x([0-9a-fA-F]+)\s*$", line)
        if m and bank is not None:
            out[bank][int(m.group(1))] = bytes.fromhex(m.group(2))
    return out


def tpm2_eventlog_pcrs(path: Path) -> dict[Bank, dict[int, bytes]]:
    out = run(["tpm2_eventlog", str(path)], timeout=60).stdout.decode()
    assert "\npcrs:\n" in out
    return parse_pcr_lines(out.split("\npcrs:\n", 1)[1])


def test_real_logs_were_captured() -> None:
    names = {p.name for p in LOGS}
    assert {"seabios-smp1.bin", "seabios-smp2.bin", "ovmf-smp1.bin"} <= names


@pytest.mark.parametrize("path", LOGS, ids=lambda p: p.stem)
def test_replay_equals_tpm2_eventlog(path: Path) -> None:
    log = parse(path.read_bytes(), str(path))
    assert log.format == "crypto-agile"
    assert set(log.banks) == set(ALL_BANKS)
    rp = replay_log(log)
    theirs = tpm2_eventlog_pcrs(path)
    assert set(theirs) == set(log.banks)
    for bank, values in theirs.items():
        assert set(values) == set(rp.touched[bank])  # the same PCRs are extended
        for pcr, value in values.items():
            assert rp.values[bank][pcr] == value, f"{bank}:{pcr}"


@pytest.mark.parametrize("path", LOGS, ids=lambda p: p.stem)
def test_replay_equals_the_guests_tpm(path: Path) -> None:
    """Every PCR the log extends equals what the guest read from its TPM; the others
    hold their reset values (0, all ones for 17-22), except PCR 10 where the guest
    kernel's IMA measures after the firmware log ends."""
    rp = replay_log(parse(path.read_bytes(), str(path)))
    tpm = parse_pcr_lines((DATA / (path.stem + ".pcrs.yaml")).read_text())
    assert set(tpm) == set(ALL_BANKS)
    for bank, values in tpm.items():
        assert len(values) == 24
        for pcr, value in values.items():
            if pcr == 10 and pcr not in rp.touched[bank]:
                assert value != rp.values[bank][pcr]  # IMA was here
                continue
            assert rp.values[bank][pcr] == value, f"{bank}:{pcr}"


def test_ovmf_log_has_uefi_events() -> None:
    log = parse((DATA / "ovmf-smp1.bin").read_bytes())
    names = {ev.type_name for ev in log.events}
    assert "EV_EFI_VARIABLE_DRIVER_CONFIG" in names and "EV_SEPARATOR" in names


def write(tmp_path: Path, data: bytes, name: str = "log.bin") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_legacy_sha1_log_equals_tpm2_eventlog(tmp_path: Path) -> None:
    import hashlib

    evs = [(0, 8, b"crtm version"), (0, 1, b"post"), (4, 0xD, b"boot loader"), (7, 4, b"\0" * 4)]
    data = b"".join(legacy_event(p, t, hashlib.sha1(d).digest(), d) for p, t, d in evs)
    path = write(tmp_path, data)
    log = parse(data)
    assert log.format == "sha1" and log.banks == (Bank.SHA1,)
    rp = replay_log(log)
    theirs = tpm2_eventlog_pcrs(path)
    assert theirs[Bank.SHA1] == {p: rp.values[Bank.SHA1][p] for p in sorted(rp.touched[Bank.SHA1])}


def test_unknown_declared_algorithm_is_skipped_by_size(tmp_path: Path) -> None:
    """SM3 is declared in the header: its digests are stepped over, the others replay."""
    algs = [(Bank.SHA256.alg_id, 32), (SM3_256, 32)]
    data = spec_id_event(algs)
    for pcr, payload in [(0, b"a"), (2, b"b"), (0, b"c")]:
        data += event2(
            pcr,
            0xD,
            [(SM3_256, bytes(32)), (Bank.SHA256.alg_id, Bank.SHA256.hash(payload))],
            payload,
        )
    path = write(tmp_path, data)
    log = parse(data)
    assert log.banks == (Bank.SHA256,) and log.unknown_algorithms == (SM3_256,)
    rp = replay_log(log)
    theirs = tpm2_eventlog_pcrs(path)
    for pcr, value in theirs[Bank.SHA256].items():
        assert rp.values[Bank.SHA256][pcr] == value


def test_startup_locality_sets_pcr0_start() -> None:
    """TCG PC Client PFP: StartupLocality 3 makes PCR 0 start at 00..03, and EV_NO_ACTION
    records are never extended. (Debian's tpm2_eventlog 5.4 extends EV_NO_ACTION records'
    zero digests and ignores the locality, unlike the spec and later tpm2-tools, so it
    cannot serve as the reference here.)"""
    data = spec_id_event(BANK_ALGS)
    data += event2(0, 3, [(a, bytes(s)) for a, s in BANK_ALGS], b"StartupLocality\0\x03")
    data += measured(0, b"crtm")
    rp = replay_log(parse(data))
    for bank in ALL_BANKS:
        start = bytes(bank.size - 1) + b"\x03"
        assert rp.values[bank][0] == bank.hash(start + bank.hash(b"crtm"))


def test_startup_locality_after_a_pcr0_extend_is_refused() -> None:
    data = spec_id_event(BANK_ALGS) + measured(0, b"crtm")
    data += event2(0, 3, [(a, bytes(s)) for a, s in BANK_ALGS], b"StartupLocality\0\x03")
    with pytest.raises(InputError, match="StartupLocality"):
        replay_log(parse(data))


def test_drtm_log_starts_pcr17_from_zero() -> None:
    data = spec_id_event(BANK_ALGS) + measured(17, b"sinit") + measured(18, b"mle")
    rp = replay_log(parse(data))
    assert rp.late_launch
    assert rp.values[Bank.SHA256][17] == Bank.SHA256.hash(bytes(32) + Bank.SHA256.hash(b"sinit"))
    assert rp.values[Bank.SHA256][20] == bytes(32)
    firmware = replay_log(parse(spec_id_event(BANK_ALGS) + measured(0, b"x")))
    assert firmware.values[Bank.SHA1][17] == b"\xff" * 20


def test_event_without_a_bank_does_not_extend_it() -> None:
    data = spec_id_event(BANK_ALGS) + measured(5, b"only sha256", banks=(Bank.SHA256,))
    rp = replay_log(parse(data))
    assert rp.values[Bank.SHA1][5] == bytes(20) and 5 not in rp.touched[Bank.SHA1]
    assert 5 in rp.touched[Bank.SHA256]


GOOD = spec_id_event(BANK_ALGS) + measured(4, b"ipl")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (GOOD[:-1], "truncated"),
        (GOOD[:40], "event data of record 0"),
        (GOOD[:28] + struct.pack("<I", 30) + GOOD[32:62], "Spec ID header"),
        (spec_id_event([(Bank.SHA256.alg_id, 33)]), "digestSize of sha256 is 33"),
        (spec_id_event([(Bank.SHA256.alg_id, 32)] * 2), "listed twice"),
        (spec_id_event([]), "numberOfAlgorithms is 0"),
        (spec_id_event([(0x1234, 5000)]), "absurd"),
        (spec_id_event(BANK_ALGS) + event2(24, 1, [], b""), "PCR index 24"),
        (spec_id_event(BANK_ALGS) + struct.pack("<III", 0, 1, 0xFFFFFFFF), "digest count"),
        (spec_id_event(BANK_ALGS) + event2(0, 1, [(0x0012, bytes(32))], b""), "0x0012"),
        (
            spec_id_event(BANK_ALGS) + event2(0, 1, [(4, bytes(20)), (4, bytes(20))], b""),
            "appears twice",
        ),
        (
            spec_id_event(BANK_ALGS) + struct.pack("<III", 0, 1, 0) + b"\xff\xff\xff\xff",
            "needs 4294967295",
        ),
        (legacy_event(0, 1, bytes(20), b"") + b"\x01\x02", "truncated"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_logs_give_input_errors(data: bytes, message: str) -> None:
    with pytest.raises(InputError) as exc:
        replay_log(parse(data, "bad.log"))
    assert message in str(exc.value)
    assert "offset" in str(exc.value)
    assert exc.value.exit_status == 2


def test_parsed_log_keeps_offsets_and_data() -> None:
    log: EventLog = parse(GOOD)
    (ev,) = log.events
    assert ev.offset == len(spec_id_event(BANK_ALGS)) and ev.data == b"ipl"
    assert ev.type_name == "EV_IPL" and ev.index == 1
    assert ev.to_event().digests[Bank.SHA384] == Bank.SHA384.hash(b"ipl")


@pytest.mark.qemu
def test_capture_tool_fresh_seabios_boot(tmp_path: Path) -> None:
    """tools/capture-eventlog end to end: a fresh guest's log replays to the PCRs the
    guest read from its TPM and to tpm2_eventlog's values."""
    tool = Path(__file__).parent.parent / "tools" / "capture-eventlog"
    out = tmp_path / "fresh"
    run([str(tool), str(out), "--timeout", "150"], timeout=200)
    log_path = tmp_path / "fresh.bin"
    rp = replay_log(parse(log_path.read_bytes(), str(log_path)))
    tpm = parse_pcr_lines((tmp_path / "fresh.pcrs.yaml").read_text())
    theirs = tpm2_eventlog_pcrs(log_path)
    for bank in ALL_BANKS:
        assert rp.touched[bank] == set(theirs[bank])
        for pcr in rp.touched[bank]:
            assert rp.values[bank][pcr] == tpm[bank][pcr] == theirs[bank][pcr]
