"""Done-when for sealing: each allowed mode unseals (cryptsetup accepts the key), a mode
not allowed, a PCR one event off, or the phase cap makes the TPM refuse.

The PCRs are reached by real extends on swtpm: a late launch through swtpm's control
channel (locality 4), PCR 17-19 extends at locality 2, PCR 11 at locality 0. Both the
Python path (actvsm unseal's library) and the tpm2-tools script of the initramfs run.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.banks import Bank
from builder.seal import (
    LocalTpm,
    OfflineTargets,
    PolicyRefused,
    Sealer,
    VolumeSpec,
    make_volume,
)
from builder.seal.launchsim import BootScript, apply, reboot
from builder.seal.script import unseal_script
from builder.seal.unseal import unseal_volume
from builder.swtpm import Swtpm, tools_env

PCRS = (11, 17, 18, 19)
LAUNCH = b"SINIT and tboot as measured by the late launch"


Extends = tuple[tuple[int, bytes], ...]


def boot(cmdline: bytes, *, extra: Extends = (), static: Extends = ()) -> BootScript:
    drtm = ((17, b"tboot launch policy"), (18, cmdline), (19, b"initramfs"), *extra)
    return BootScript(LAUNCH, drtm, static)


MODES = {m: boot(b"actvsm.mode=" + m.encode()) for m in ("normal", "admin", "update")}
VOLUMES = {"local": ("normal", "admin"), "offline": ("normal", "admin"), "adminonly": ("admin",)}

# scenario -> (boot script, the mode the TPM is really in or None)
SCENARIOS = {
    "normal": (MODES["normal"], "normal"),
    "admin": (MODES["admin"], "admin"),
    "update": (MODES["update"], "update"),
    "normal-one-event-more": (boot(b"actvsm.mode=normal", extra=((18, b"x"),)), None),
    "admin-one-event-less": (
        BootScript(LAUNCH, ((17, b"tboot launch policy"), (18, b"actvsm.mode=admin"))),
        None,
    ),  # fmt: skip
    "normal-after-phase-cap": (boot(b"actvsm.mode=normal", static=((11, b"phase cap"),)), None),
}


@dataclass
class Rig:
    tpm: Swtpm
    volumes: dict[str, Path]
    script: Path


def tcg_srk_public(tpm: Swtpm, path: Path, alg: str) -> None:
    """The target's SRK public area as tpm2-tools writes it (TPM2B_PUBLIC)."""
    env = tools_env(tpm)
    ctx = path.with_suffix(".ctx")
    attrs = "decrypt|restricted|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda"
    g = {"ecc": "ecc256:aes128cfb", "rsa": "rsa2048:null:aes128cfb"}[alg]
    commands: list[list[str | Path]] = [
        ["tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", g, "-a", attrs, "-c", ctx],
        ["tpm2_readpublic", "-c", ctx, "-o", path],
        ["tpm2_flushcontext", "-t"],
    ]
    for cmd in commands:
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    out = tmp_path_factory.mktemp("sealed")
    predicted = {m: s.predict(Bank.SHA256, PCRS) for m, s in MODES.items()}
    with Swtpm() as tpm:
        srk = out / "srk.tpm2b_public"
        tcg_srk_public(tpm, srk, "ecc")
        sealers: dict[str, Sealer] = {"local": LocalTpm(tpm.tcti), "offline": OfflineTargets([srk])}
        paths = {}
        for name, modes in VOLUMES.items():
            sealer = sealers.get(name, sealers["local"])
            spec = VolumeSpec(name, 32 << 20, modes)
            paths[name] = make_volume(spec, predicted, sealer, out).path
        script = out / "unseal.sh"
        script.write_text(unseal_script())
        script.chmod(0o755)
        yield Rig(tpm, paths, script)


def cryptsetup_accepts(volume: Path, key: bytes) -> bool:
    proc = subprocess.run(
        ["cryptsetup", "open", "--test-passphrase", "--key-file", "-", volume],
        input=key, capture_output=True, timeout=60,
    )  # fmt: skip
    return proc.returncode == 0


def run_script(rig: Rig, volume: Path) -> subprocess.CompletedProcess[bytes]:
    env = tools_env(rig.tpm)
    env["TMPDIR"] = str(volume.parent)
    return subprocess.run([rig.script, volume], env=env, capture_output=True, timeout=120)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_unseal_only_in_allowed_modes(rig: Rig, scenario: str) -> None:
    script, mode = SCENARIOS[scenario]
    reboot(rig.tpm)
    apply(rig.tpm, script)
    for name, volume in rig.volumes.items():
        allowed = mode in VOLUMES[name]
        by_script = run_script(rig, volume)
        if allowed:
            got = unseal_volume(volume, rig.tpm.tcti)
            assert got.mode == mode
            assert cryptsetup_accepts(volume, got.secret), name
            assert by_script.returncode == 0, by_script.stderr.decode()
            assert by_script.stdout == got.secret
        else:
            with pytest.raises(PolicyRefused, match="match no mode allowed"):
                unseal_volume(volume, rig.tpm.tcti)
            assert by_script.returncode == 1, (name, by_script.stderr.decode())
            assert by_script.stdout == b""
            assert b"refused the policy" in by_script.stderr


def test_wrong_key_is_rejected_by_cryptsetup(rig: Rig) -> None:
    """The acceptance check above can fail: cryptsetup refuses another key."""
    assert not cryptsetup_accepts(rig.volumes["local"], os.urandom(32))


def test_refusal_names_the_differing_pcr(rig: Rig) -> None:
    reboot(rig.tpm)
    apply(rig.tpm, SCENARIOS["normal-after-phase-cap"][0])
    with pytest.raises(PolicyRefused) as err:
        unseal_volume(rig.volumes["adminonly"], rig.tpm.tcti)
    assert "mode admin: PCRs 11, 18 differ" in str(err.value)
