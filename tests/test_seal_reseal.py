"""Secure transition: `actvsm reseal` re-binds the key to the next release's PCRs.

Booted in the current release's mode, the admin reseals to the predicted values of the
update's mode; afterwards the old mode is refused and the new one unseals the same key.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from builder.banks import Bank
from builder.seal import LocalTpm, VolumeSpec, make_volume, unseal_volume
from builder.seal.launchsim import BootScript, apply, reboot
from builder.seal.luks import tokens
from builder.swtpm import Swtpm

PCRS = (11, 17, 18, 19)
OLD = BootScript(b"launch", ((18, b"kernel release 1"),))
NEW = BootScript(b"launch", ((18, b"kernel release 2"),))


def actvsm(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "builder.cli", *map(str, args)], capture_output=True, timeout=300
    )


def test_reseal_moves_the_key_to_the_next_release(swtpm: Swtpm, tmp_path: Path) -> None:
    old = {"normal": OLD.predict(Bank.SHA256, PCRS)}
    art = make_volume(VolumeSpec("data", 32 << 20, ("normal",)), old, LocalTpm(swtpm.tcti),
                      tmp_path)  # fmt: skip
    reboot(swtpm)
    apply(swtpm, OLD)
    key = unseal_volume(art.path, swtpm.tcti).secret
    nxt = tmp_path / "next.json"
    new_values = NEW.predict(Bank.SHA256, PCRS)
    nxt.write_text(json.dumps({"normal": {str(p): v.hex() for p, v in new_values.items()}}))
    proc = actvsm("reseal", art.path, "--tpm", swtpm.tcti, "--modes", "normal",
                  "--predicted", nxt, "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    assert [t["type"] for t in tokens(art.path).values()] == ["actvsm-tpm2"]  # old one gone
    refused = actvsm("unseal", art.path, "--tpm", swtpm.tcti)
    assert refused.returncode == 1 and b"PCR 18 differs" in refused.stderr
    reboot(swtpm)
    apply(swtpm, NEW)
    assert unseal_volume(art.path, swtpm.tcti).secret == key


def test_reseal_in_a_wrong_mode_changes_nothing(swtpm: Swtpm, tmp_path: Path) -> None:
    old = {"normal": OLD.predict(Bank.SHA256, PCRS)}
    art = make_volume(VolumeSpec("data", 32 << 20, ("normal",)), old, LocalTpm(swtpm.tcti),
                      tmp_path)  # fmt: skip
    before = tokens(art.path)
    reboot(swtpm)
    apply(swtpm, NEW)  # not allowed yet
    nxt = tmp_path / "next.json"
    nxt.write_text(json.dumps({"normal": {str(p): "00" * 32 for p in PCRS}}))
    proc = actvsm("reseal", art.path, "--tpm", swtpm.tcti, "--modes", "normal",
                  "--predicted", nxt)  # fmt: skip
    assert proc.returncode == 1 and b"refused to unseal" in proc.stderr
    assert tokens(art.path) == before
