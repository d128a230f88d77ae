"""Offline sealing (no TPM at seal time) to a target SRK's public area.

Interop: the duplicate is imported and unsealed by tpm2-tools alone (tpm2_import,
tpm2_load, tpm2_unseal with a PolicyPCR + PolicyOR session), on ECC and RSA parents.
SRK files are read in the forms tpm2_readpublic writes; a fleet gets one token per
target, and a TPM outside the fleet gets nothing.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.banks import Bank
from builder.errors import BuildError, InputError
from builder.seal import (
    LocalTpm,
    OfflineTargets,
    PolicyRefused,
    PolicySpec,
    VolumeSpec,
    build_policy,
    make_volume,
    read_target_srk,
    unseal_volume,
)
from builder.seal.launchsim import pcr_extend
from builder.swtpm import Swtpm, tools_env

SRK_ATTRS = "decrypt|restricted|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda"
KEY_ALG = {"ecc": "ecc256:aes128cfb", "rsa": "rsa2048:null:aes128cfb"}
SPEC = PolicySpec((11, 17, 18, 19), Bank.SHA256)


def tools(tpm: Swtpm, *cmd: str | Path) -> bytes:
    proc = subprocess.run(cmd, env=tools_env(tpm), capture_output=True, timeout=60)
    assert proc.returncode == 0, (cmd, proc.stderr.decode())
    return proc.stdout


def make_srk(tpm: Swtpm, d: Path, alg: str) -> Path:
    """Create the TCG SRK with tpm2-tools and export its public area (TPM2B_PUBLIC)."""
    tools(tpm, "tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", KEY_ALG[alg],
          "-a", SRK_ATTRS, "-c", d / f"{alg}.ctx")  # fmt: skip
    tools(tpm, "tpm2_readpublic", "-c", d / f"{alg}.ctx", "-o", d / f"{alg}.pub",
          "-n", d / f"{alg}.name")  # fmt: skip
    tools(tpm, "tpm2_readpublic", "-c", d / f"{alg}.ctx", "-f", "pem", "-o", d / f"{alg}.pem")
    tools(tpm, "tpm2_flushcontext", "-t")
    return d / f"{alg}.pub"


def current_pcrs(tpm: Swtpm) -> dict[int, bytes]:
    """PCR values as tpm2_pcrread reports them (the branch this TPM is in)."""
    out = tools(tpm, "tpm2_pcrread", "sha256:11,17,18,19", "-o", "/dev/stdout", "-Q")
    return {pcr: out[i * 32 : (i + 1) * 32] for i, pcr in enumerate((11, 17, 18, 19))}


@pytest.fixture
def tpm() -> Iterator[Swtpm]:
    with Swtpm() as t:
        yield t


@pytest.mark.parametrize("alg", ["ecc", "rsa"])
def test_tpm2_tools_alone_import_and_unseal(tpm: Swtpm, tmp_path: Path, alg: str) -> None:
    srk_file = make_srk(tpm, tmp_path, alg)
    here = current_pcrs(tpm)
    elsewhere = {**here, 18: bytes(32)}
    policy = build_policy({"other": elsewhere, "this": here}, ["other", "this"], SPEC)
    secret = os.urandom(32)
    (blob,) = OfflineTargets([srk_file]).seal(secret, policy.digest)
    for name, data in (("obj.pub", blob.public), ("dup", blob.private), ("seed", blob.seed)):
        (tmp_path / name).write_bytes(data)
    for i, branch in enumerate(policy.or_branches):
        (tmp_path / f"branch{i}").write_bytes(branch)
    t = tmp_path
    tools(tpm, "tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", KEY_ALG[alg],
          "-a", SRK_ATTRS, "-c", t / "parent.ctx")  # fmt: skip
    tools(tpm, "tpm2_import", "-C", t / "parent.ctx", "-u", t / "obj.pub", "-i", t / "dup",
          "-s", t / "seed", "-r", t / "obj.priv")  # fmt: skip
    tools(tpm, "tpm2_flushcontext", "-t")
    tools(tpm, "tpm2_load", "-C", t / "parent.ctx", "-u", t / "obj.pub", "-r", t / "obj.priv",
          "-c", t / "obj.ctx")  # fmt: skip
    tools(tpm, "tpm2_flushcontext", "-t")

    def unseal() -> subprocess.CompletedProcess[bytes]:
        s = t / "session.ctx"
        tools(tpm, "tpm2_startauthsession", "--policy-session", "-S", s)
        try:
            tools(tpm, "tpm2_policypcr", "-S", s, "-l", "sha256:11,17,18,19")
            branches = ",".join(str(t / f"branch{i}") for i in range(2))
            env = tools_env(tpm)
            proc = subprocess.run(["tpm2_policyor", "-S", s, "-l", f"sha256:{branches}"],
                                  env=env, capture_output=True, timeout=60)  # fmt: skip
            if proc.returncode != 0:
                return proc
            return subprocess.run(["tpm2_unseal", "-c", t / "obj.ctx", "-p", f"session:{s}"],
                                  env=env, capture_output=True, timeout=60)  # fmt: skip
        finally:
            tools(tpm, "tpm2_flushcontext", s)

    ok = unseal()
    assert ok.returncode == 0 and ok.stdout == secret
    pcr_extend(tpm, 11, b"phase cap")
    refused = unseal()
    assert refused.returncode != 0 and refused.stdout == b""


@pytest.mark.parametrize("form", ["tpm2b", "tpmt", "pem"])
@pytest.mark.parametrize("alg", ["ecc", "rsa"])
def test_srk_file_forms_give_the_tpms_name(tpm: Swtpm, tmp_path: Path, alg: str, form: str) -> None:
    tpm2b = make_srk(tpm, tmp_path, alg)
    path = {"tpm2b": tpm2b, "pem": tmp_path / f"{alg}.pem", "tpmt": tmp_path / "srk.tpmt"}[form]
    (tmp_path / "srk.tpmt").write_bytes(tpm2b.read_bytes()[2:])
    target = read_target_srk(path)
    assert target.alg.value == alg
    assert target.name == (tmp_path / f"{alg}.name").read_bytes()  # as tpm2_readpublic -n


def test_bad_srk_file_is_an_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "srk.pub"
    bad.write_bytes(b"\x00\x05hello")
    with pytest.raises(InputError, match="not a TPM public area"):
        read_target_srk(bad)


def test_fleet_gets_one_token_per_target(tmp_path: Path) -> None:
    with Swtpm() as a, Swtpm() as b, Swtpm() as stranger:
        srks = []
        for t, n, alg in ((a, "a", "ecc"), (b, "b", "rsa")):
            (tmp_path / n).mkdir()
            srks.append(make_srk(t, tmp_path / n, alg))
        predicted = {"normal": current_pcrs(a)}
        assert current_pcrs(b) == predicted["normal"]
        art = make_volume(VolumeSpec("fleet", 32 << 20, ("normal",)), predicted,
                          OfflineTargets(srks), tmp_path)  # fmt: skip
        assert [t.source for t in art.tokens] == [str(p) for p in srks]
        keys = {unseal_volume(art.path, t.tcti).secret for t in (a, b)}
        assert len(keys) == 1
        with pytest.raises(BuildError, match="sealed for this TPM's storage key"):
            unseal_volume(art.path, stranger.tcti)


def test_sha1_bank_policy(tpm: Swtpm, tmp_path: Path) -> None:
    """A policy over sha1 PCR values (session hash stays sha256), local and offline."""
    spec = PolicySpec((0, 11, 17), Bank.SHA1)
    out = tools(tpm, "tpm2_pcrread", "sha1:0,11,17", "-o", "/dev/stdout", "-Q")
    now = {p: out[i * 20 : (i + 1) * 20] for i, p in enumerate((0, 11, 17))}
    srk = make_srk(tpm, tmp_path, "ecc")
    for name, sealer in (("local", LocalTpm(tpm.tcti)), ("offline", OfflineTargets([srk]))):
        art = make_volume(VolumeSpec(name, 32 << 20, ("normal",)), {"normal": now}, sealer,
                          tmp_path, policy=spec)  # fmt: skip
        assert unseal_volume(art.path, tpm.tcti).mode == "normal"
    pcr_extend(tpm, 0, b"firmware")
    with pytest.raises(PolicyRefused, match="mode normal: PCR 0 differs"):
        unseal_volume(tmp_path / "offline.luks", tpm.tcti)
