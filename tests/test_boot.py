"""The measured boot end to end: real builds of the small test images, real QEMU boots
through the rig (swtpm, emulated late launch from the files on disk), the real initramfs
with cryptsetup, veritysetup and tpm2-tools inside.

The judge of the PCR values is swtpm (read back by the guest from sysfs); the judge of
every key is the TPM's policy check. Boots run one at a time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from builder.banks import Bank
from builder.boot import BootReport, BootRequest, boot_output
from builder.rig.console import parse_pcrs
from tests.buildkit import TWO_VOLUMES_DEF, actvsm, small_definition

pytestmark = pytest.mark.qemu

BANKS = (Bank.SHA1, Bank.SHA256)
TIMEOUT = 240.0


@pytest.fixture(scope="module")
def small2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("small2")
    defn = small_definition(work, source=TWO_VOLUMES_DEF)
    cache = tmp_path_factory.getbasetemp() / "boot-stage-cache"  # shared by the boot tests
    actvsm("build", str(defn), "-o", str(work / "out"), "--cache-dir", str(cache), check=True)
    return work / "out" / "small2"


def boot(out: Path, mode: str, state: Path | None = None, **kw: Any) -> BootReport:
    return boot_output(BootRequest(out, mode, state, timeout=TIMEOUT, **kw))


def manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return data


def expected_pcrs(out: Path, mode: str) -> dict[Bank, dict[int, bytes]]:
    """The manifest's prediction for `mode` after the phase cap."""
    m = manifest(out)["modes"][mode]
    want: dict[Bank, dict[int, bytes]] = {}
    for bank in BANKS:
        values = {int(p): bytes.fromhex(v) for p, v in m["pcrs"][bank.value].items()}
        after = m["phase_cap"]["pcrs_after"][bank.value]
        values |= {int(p): bytes.fromhex(v) for p, v in after.items()}
        want[bank] = {p: values[p] for p in (11, 17, 18, 19)}
    return want


def lines_with(rep: BootReport, prefix: str) -> list[str]:
    return [line.split(prefix, 1)[1].strip() for line in rep.console.splitlines() if prefix in line]


def check_up(rep: BootReport, out: Path, mode: str, volumes: set[str]) -> None:
    """Booted into the workload with the predicted PCRs and exactly `volumes` open."""
    assert rep.ok, rep.console[-4000:]
    assert rep.proxy_errors == [] and rep.launches == 1
    assert lines_with(rep, "ACTVSM-MODE") == [mode]
    [pcrs] = parse_pcrs(rep.console)
    assert pcrs == expected_pcrs(out, mode)
    [mapped] = lines_with(rep, "ACTVSM-MAPPED")
    assert set(mapped.split()) == {"actvsm-base"} | {f"actvsm-{v}" for v in volumes}
    assert rep.initramfs_seconds is not None and rep.initramfs_seconds > 0


def test_data_persists_across_boots_and_modes_open_their_volumes(
    small2: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    before = {p: p.read_bytes() for p in small2.rglob("*") if p.is_file()}

    first = boot(small2, "normal", state)
    check_up(first, small2, "normal", {"data"})
    assert lines_with(first, "ACTVSM-DATA") == ["/data read 0"]
    assert "actvsm: volume logs stays closed in mode normal" in first.console

    # The second boot through the CLI: exit status and --json from the guest's result.
    proc = actvsm("boot", str(small2), "--mode", "normal", "--state", str(state), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["outcome"] == "marker" and result["mode"] == "normal"
    assert "ACTVSM-DATA /data read 1" in proc.stderr  # the console, streamed

    admin = boot(small2, "admin", state)
    check_up(admin, small2, "admin", {"data", "logs"})
    assert lines_with(admin, "ACTVSM-DATA") == ["/data read 2", "/logs read 0"]

    after = {p: p.read_bytes() for p in small2.rglob("*") if p.is_file()}
    assert after == before  # the output is never modified


def test_update_mode_opens_no_volume(small2: Path) -> None:
    rep = boot(small2, "update")
    check_up(rep, small2, "update", set())
    assert lines_with(rep, "ACTVSM-DATA") == []


def test_recovery_mode_boots_without_keys(small2: Path) -> None:
    rep = boot(small2, "recovery")
    check_up(rep, small2, "recovery", set())
    assert "actvsm: mode recovery boots without keys; no volume is unsealed" in rep.console


def test_bad_mode_and_output_are_input_errors(small2: Path, tmp_path: Path) -> None:
    proc = actvsm("boot", str(small2), "--mode", "nosuch")
    assert proc.returncode == 2 and "use one of: normal, admin, update, recovery" in proc.stderr
    proc = actvsm("boot", str(tmp_path))
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr
    assert "Traceback" not in proc.stderr
