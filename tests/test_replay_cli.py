"""`actvsm replay`: JSON shape, --pcrs against real TPM output, --manifest divergence."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from builder.banks import ALL_BANKS, Bank
from builder.cel import to_cel
from builder.eventlog import parse
from builder.pcr import Event, replay
from builder.run import run
from builder.swtpm import Swtpm
from tests.test_eventlog import event2, measured, spec_id_event, tpm2_eventlog_pcrs

DATA = Path(__file__).parent / "data" / "eventlogs"
BANK_ALGS = [(b.alg_id, b.size) for b in ALL_BANKS]


def actvsm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("name", ["seabios-smp1", "seabios-smp2", "ovmf-smp1"])
def test_json_pcrs_shape_and_values(name: str) -> None:
    path = DATA / f"{name}.bin"
    proc = actvsm("replay", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc["pcrs"]) == {"sha1", "sha256", "sha384", "sha512"}
    theirs = tpm2_eventlog_pcrs(path)
    for bank, values in doc["pcrs"].items():
        assert set(values) == {str(i) for i in range(24)}
        assert all(v == v.lower() and len(v) == 2 * Bank(bank).size for v in values.values())
        for pcr, value in theirs[Bank(bank)].items():
            assert values[str(pcr)] == value.hex()
        assert doc["extended"][bank] == sorted(theirs[Bank(bank)])


def test_pcrs_file_from_the_guest(tmp_path: Path) -> None:
    log, pcrs = DATA / "ovmf-smp1.bin", DATA / "ovmf-smp1.pcrs.yaml"
    proc = actvsm("replay", str(log), "--pcrs", str(pcrs), "--json")
    assert proc.returncode == 0, proc.stderr
    check = json.loads(proc.stdout)["pcr_check"]
    assert check["equal"] and check["compared"] == 4 * 9
    assert {d["pcr"] for d in check["not_covered"]} == {10}  # IMA
    # One PCR the log explains, changed: exit 1, named.
    text = pcrs.read_text().replace("  4 : 0x5D4CB060", "  4 : 0x5D4CB061")
    assert text != pcrs.read_text()
    (tmp_path / "p.yaml").write_text(text)
    proc = actvsm("replay", str(log), "--pcrs", str(tmp_path / "p.yaml"))
    assert proc.returncode == 1
    assert "sha1:4" in proc.stdout


def test_pcrs_from_tpm2_pcrread_of_a_real_tpm(swtpm: Swtpm, tmp_path: Path) -> None:
    """Extend swtpm with the events of a log, read it with tpm2_pcrread, compare."""
    payloads = [(0, b"crtm"), (4, b"loader"), (7, b"\0\0\0\0"), (4, b"kernel")]
    log = spec_id_event(BANK_ALGS) + b"".join(measured(p, d) for p, d in payloads)
    (tmp_path / "log.bin").write_bytes(log)
    for pcr, data in payloads:
        spec = ",".join(f"{b.value}={b.hash(data).hex()}" for b in ALL_BANKS)
        run(["tpm2_pcrextend", f"{pcr}:{spec}"], env=swtpm.env, timeout=30)

    def pcrread() -> Path:
        out = run(
            ["tpm2_pcrread", "sha1:0,4,7+sha256:0,4,7,10+sha384:all"], env=swtpm.env, timeout=30
        )
        (tmp_path / "pcrs.yaml").write_bytes(out.stdout)
        return tmp_path / "pcrs.yaml"

    proc = actvsm("replay", str(tmp_path / "log.bin"), "--pcrs", str(pcrread()))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all 9 PCR values the log extends match" in proc.stdout
    run(["tpm2_pcrextend", f"7:sha256={'11' * 32}"], env=swtpm.env, timeout=30)
    proc = actvsm("replay", str(tmp_path / "log.bin"), "--pcrs", str(pcrread()), "--json")
    assert proc.returncode == 1
    diffs = json.loads(proc.stdout)["pcr_check"]["differences"]
    assert [(d["bank"], d["pcr"]) for d in diffs] == [("sha256", 7)]


def drtm_events() -> list[Event]:
    return [
        Event.measuring(17, b"sinit acm", "sinit", "SINIT ACM"),
        Event.measuring(18, b"tboot", "mle", "tboot MLE"),
        Event.measuring(17, b"policy", "lcp", "launch control policy"),
        Event.measuring(18, b"kernel+cmdline", "kernel", "kernel and command line"),
    ]


def log_of(events: list[Event]) -> bytes:
    return spec_id_event(BANK_ALGS) + b"".join(
        event2(e.pcr, e.event_type, [(b.alg_id, d) for b, d in sorted(e.digests.items())], b"")
        for e in events
    )


def manifest(events: list[Event]) -> dict[str, Any]:
    values = replay(events, late_launch=True)
    return {
        "format": "actvsm-manifest",
        "version": 1,
        "modes": {
            "normal": {
                "events": [e.to_json() for e in events],
                "pcrs": {
                    b.value: {str(p): v.hex() for p, v in sorted(vals.items())}
                    for b, vals in values.items()
                },
            }
        },
    }


def run_manifest(
    tmp_path: Path, log_events: list[Event], predicted: list[Event], *extra: str
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "log.bin").write_bytes(log_of(log_events))
    (tmp_path / "m.json").write_text(json.dumps(manifest(predicted)))
    return actvsm(
        "replay", str(tmp_path / "log.bin"), "--manifest", str(tmp_path / "m.json"), *extra
    )


def test_manifest_matching_log(tmp_path: Path) -> None:
    proc = run_manifest(tmp_path, drtm_events(), drtm_events(), "--mode", "normal")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "matches the 4 predicted events" in proc.stdout


def test_manifest_names_the_first_divergent_event(tmp_path: Path) -> None:
    predicted = drtm_events()
    actual = list(predicted)
    actual[3] = Event.measuring(18, b"kernel+other cmdline", "kernel", "x")
    proc = run_manifest(tmp_path, actual, predicted, "--mode", "normal", "--json")
    assert proc.returncode == 1
    check = json.loads(proc.stdout)["manifest_check"]
    div = check["first_divergence"]
    assert (div["pcr"], div["position"], div["reason"], div["log_record"]) == (18, 1, "digest", 4)
    assert "kernel and command line" in div["message"]
    assert {(d["bank"], d["pcr"]) for d in check["value_differences"]} == {
        (b.value, 18) for b in ALL_BANKS
    }


def test_manifest_missing_and_unexpected_events(tmp_path: Path) -> None:
    predicted = drtm_events()
    proc = run_manifest(tmp_path, predicted[:3], predicted, "--mode", "normal", "--json")
    div = json.loads(proc.stdout)["manifest_check"]["first_divergence"]
    assert proc.returncode == 1 and div["reason"] == "missing" and div["pcr"] == 18
    extra = [*predicted[:2], Event.measuring(17, b"surprise", "k", "d"), *predicted[2:]]
    proc = run_manifest(tmp_path, extra, predicted, "--mode", "normal", "--json")
    div = json.loads(proc.stdout)["manifest_check"]["first_divergence"]
    assert proc.returncode == 1 and div["log_record"] == 3 and div["reason"] == "digest"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--mode", "recovery"], "mode 'recovery' is not in the manifest"),
        ([], "--manifest and --mode go together"),
    ],
)
def test_manifest_bad_input_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = run_manifest(tmp_path, drtm_events(), drtm_events(), *args)
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "content",
    ["sha256:\n  0 : 0xZZ\n", "sha999:\n  0 : 0x00\n", "sha1:\n  0 : 0x00\n", "- a list\n", "{"],
)
def test_bad_pcrs_file_exit_2(tmp_path: Path, content: str) -> None:
    (tmp_path / "p.yaml").write_text(content)
    proc = actvsm("replay", str(DATA / "seabios-smp1.bin"), "--pcrs", str(tmp_path / "p.yaml"))
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.startswith("actvsm: error: ") and "Traceback" not in proc.stderr


def _bad_manifests() -> list[tuple[str, str]]:
    good = manifest(drtm_events())
    cases: list[tuple[str, str]] = [("not json {", "not JSON"), ("[" * 100000, "not JSON")]
    mutations: list[tuple[Callable[[dict[str, Any]], None], str]] = [
        (lambda m: m.update(format="other"), "not an actvsm manifest"),
        (lambda m: m.update(version=2), "version 2"),
        (lambda m: m["modes"]["normal"].update(events="x"), "events"),
        (lambda m: m["modes"]["normal"]["events"][0].update(digests="abc"), "events[0]"),
        (lambda m: m["modes"]["normal"]["events"][1].update(pcr=99), "events[1]"),
        (lambda m: m["modes"]["normal"]["pcrs"]["sha1"].update({"17": "zz"}), "pcrs.sha1.17"),
        (lambda m: m["modes"]["normal"]["pcrs"].update(md5={}), "md5"),
    ]
    for mutate, needle in mutations:
        doc = json.loads(json.dumps(good))
        mutate(doc)
        cases.append((json.dumps(doc), needle))
    return cases


@pytest.mark.parametrize(("content", "needle"), _bad_manifests())
def test_bad_manifest_exit_2(tmp_path: Path, content: str, needle: str) -> None:
    (tmp_path / "log.bin").write_bytes(log_of(drtm_events()))
    (tmp_path / "m.json").write_text(content)
    proc = actvsm(
        "replay", str(tmp_path / "log.bin"), "--manifest", str(tmp_path / "m.json"),
        "--mode", "normal",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_cel_json_log_replays_and_checks_a_manifest(tmp_path: Path) -> None:
    """The CEL-JSON that builder.cel exports is itself a log `replay` reads."""
    (tmp_path / "log.json").write_text(json.dumps(to_cel(drtm_events())))
    (tmp_path / "m.json").write_text(json.dumps(manifest(drtm_events())))
    args = ["replay", str(tmp_path / "log.json"), "--manifest", str(tmp_path / "m.json")]
    proc = actvsm(*args, "--mode", "normal", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["format"] == "cel-json" and doc["late_launch"]
    changed = drtm_events()[:3]
    (tmp_path / "log.json").write_text(json.dumps(to_cel(changed)))
    proc = actvsm(*args, "--mode", "normal")
    assert proc.returncode == 1
    assert "first divergence: PCR 18, event 2 of that PCR" in proc.stdout


def test_cel_json_of_a_real_log_gives_its_pcrs(tmp_path: Path) -> None:
    binary = DATA / "ovmf-smp1.bin"
    log = parse(binary.read_bytes())
    (tmp_path / "log.json").write_text(
        json.dumps(to_cel([ev.to_event() for ev in log.events if ev.extends]))
    )
    a = json.loads(actvsm("replay", str(binary), "--json").stdout)
    b = json.loads(actvsm("replay", str(tmp_path / "log.json"), "--json").stdout)
    assert a["pcrs"] == b["pcrs"] and a["extended"] == b["extended"]


@pytest.mark.parametrize("content", ["[{]", '[{"pcr": 1}]', "[1, 2]"])
def test_bad_cel_json_exit_2(tmp_path: Path, content: str) -> None:
    (tmp_path / "log.json").write_text(content)
    proc = actvsm("replay", str(tmp_path / "log.json"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("actvsm: error: ")
