"""Policy digests against tpm2-tools trial sessions, and sealing to a FUTURE PCR value."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.banks import ALL_BANKS, Bank
from builder.pcr import Event, replay
from builder.run import run
from builder.swtpm import Swtpm
from builder.tpmpolicy import policy_or, policy_pcr

SLOW = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def mtpm() -> Iterator[Swtpm]:
    with Swtpm() as tpm:
        yield tpm


def tools(tpm: Swtpm, *argv: str, cwd: Path | None = None) -> bytes:
    return run(list(argv), env=tpm.env, timeout=60, cwd=cwd).stdout


@st.composite
def pcr_values(draw: st.DrawFn) -> tuple[Bank, dict[int, bytes]]:
    bank = draw(st.sampled_from(ALL_BANKS))
    pcrs = draw(st.lists(st.integers(0, 23), min_size=1, max_size=8, unique=True))
    return bank, {p: draw(st.binary(min_size=bank.size, max_size=bank.size)) for p in pcrs}


@SLOW
@given(sel=pcr_values(), policy_bank=st.sampled_from([Bank.SHA256, Bank.SHA1, Bank.SHA384]))
def test_policy_pcr_equals_tpm2_createpolicy(
    mtpm: Swtpm,
    tmp_path_factory: pytest.TempPathFactory,
    sel: tuple[Bank, dict[int, bytes]],
    policy_bank: Bank,
) -> None:
    bank, values = sel
    d = tmp_path_factory.mktemp("pol")
    (d / "values").write_bytes(b"".join(values[i] for i in sorted(values)))
    try:
        tools(
            mtpm, "tpm2_createpolicy", "--policy-pcr", "-g", policy_bank.value,
            "-l", f"{bank.value}:{','.join(map(str, sorted(values)))}",
            "-f", str(d / "values"), "-L", str(d / "policy"),
        )  # fmt: skip
    finally:
        tools(mtpm, "tpm2_flushcontext", "-l")  # the tool leaves its trial session loaded
    assert (d / "policy").read_bytes() == policy_pcr(values, bank, policy_bank=policy_bank)


def trial(tpm: Swtpm, d: Path, steps: Sequence[Sequence[str]]) -> bytes:
    """Run policy commands in one trial session; return the final policy digest."""
    tools(tpm, "tpm2_startauthsession", "-S", str(d / "s.ctx"))
    try:
        for step in steps:
            tools(tpm, *step, "-S", str(d / "s.ctx"), "-L", str(d / "out"))
    finally:
        tools(tpm, "tpm2_flushcontext", str(d / "s.ctx"))
    return (d / "out").read_bytes()


@SLOW
@given(first=pcr_values(), second=pcr_values())
def test_chained_policy_pcr_equals_trial_session(
    mtpm: Swtpm,
    tmp_path_factory: pytest.TempPathFactory,
    first: tuple[Bank, dict[int, bytes]],
    second: tuple[Bank, dict[int, bytes]],
) -> None:
    """Two PolicyPCR assertions in a row: `previous` chains them as the TPM does."""
    d = tmp_path_factory.mktemp("chain")
    steps = []
    for n, (bank, values) in enumerate((first, second)):
        (d / f"v{n}").write_bytes(b"".join(values[i] for i in sorted(values)))
        steps.append(
            ["tpm2_policypcr", "-l", f"{bank.value}:{','.join(map(str, sorted(values)))}",
             "-f", str(d / f"v{n}")]
        )  # fmt: skip
    ours = policy_pcr(first[1], first[0])
    ours = policy_pcr(second[1], second[0], previous=ours)
    assert trial(mtpm, d, steps) == ours


@SLOW
@given(branches=st.lists(st.binary(min_size=32, max_size=32), min_size=2, max_size=8))
def test_policy_or_equals_tpm2_policyor(
    mtpm: Swtpm, tmp_path_factory: pytest.TempPathFactory, branches: list[bytes]
) -> None:
    d = tmp_path_factory.mktemp("or")
    names = []
    for i, b in enumerate(branches):
        (d / f"b{i}").write_bytes(b)
        names.append(str(d / f"b{i}"))
    assert trial(mtpm, d, [["tpm2_policyor", "sha256:" + ",".join(names)]]) == policy_or(branches)


def test_policy_or_refuses_bad_branch_counts() -> None:
    with pytest.raises(ValueError):
        policy_or([bytes(32)])
    with pytest.raises(ValueError):
        policy_or([bytes(32)] * 9)


def _seal(tpm: Swtpm, d: Path, policy: bytes, secret: bytes) -> None:
    (d / "policy").write_bytes(policy)
    (d / "secret").write_bytes(secret)
    tools(tpm, "tpm2_createprimary", "-C", "o", "-c", str(d / "primary.ctx"))
    tools(
        tpm, "tpm2_create", "-C", str(d / "primary.ctx"), "-L", str(d / "policy"),
        "-i", str(d / "secret"), "-u", str(d / "seal.pub"), "-r", str(d / "seal.priv"),
    )  # fmt: skip
    tools(tpm, "tpm2_flushcontext", "-t")


def _unseal(tpm: Swtpm, d: Path, auth: str) -> bytes | None:
    tools(tpm, "tpm2_createprimary", "-C", "o", "-c", str(d / "primary.ctx"))
    tools(
        tpm, "tpm2_load", "-C", str(d / "primary.ctx"), "-u", str(d / "seal.pub"),
        "-r", str(d / "seal.priv"), "-c", str(d / "seal.ctx"),
    )  # fmt: skip
    tools(tpm, "tpm2_flushcontext", "-t")  # no resource manager: free the object slots
    try:
        proc = run(
            ["tpm2_unseal", "-c", str(d / "seal.ctx"), "-p", auth],
            env=tpm.env, timeout=60, check=False,
        )  # fmt: skip
    finally:
        tools(tpm, "tpm2_flushcontext", "-t")
        tools(tpm, "tpm2_flushcontext", "-l")
    if proc.returncode == 0:
        return proc.stdout
    # Refused for the right reason only: the policy (PCR values) did not match.
    assert b"0x99d" in proc.stderr.lower() or b"policy" in proc.stderr.lower(), proc.stderr
    return None


def _extend(tpm: Swtpm, ev: Event) -> None:
    spec = ",".join(f"{b.value}={d.hex()}" for b, d in sorted(ev.digests.items()))
    tools(tpm, "tpm2_pcrextend", f"{ev.pcr}:{spec}")


@pytest.mark.parametrize("bank", [Bank.SHA256, Bank.SHA1])
def test_sealed_to_future_value_unseals_only_after_the_events(
    swtpm: Swtpm, tmp_path: Path, bank: Bank
) -> None:
    events = [
        Event.measuring(16, b"phase: initramfs", "phase", "initramfs reached"),
        Event.measuring(23, b"app image v1", "app", "application"),
        Event.measuring(16, b"phase: unseal", "phase", "before unseal"),
    ]
    predicted = replay(events)[bank]
    values = {16: predicted[16], 23: predicted[23]}
    _seal(swtpm, tmp_path, policy_pcr(values, bank), b"volume key material")
    auth = f"pcr:{bank.value}:16,23"
    assert _unseal(swtpm, tmp_path, auth) is None  # PCRs still at zero
    _extend(swtpm, events[0])
    _extend(swtpm, events[1])
    assert _unseal(swtpm, tmp_path, auth) is None  # one event short
    _extend(swtpm, events[2])
    assert _unseal(swtpm, tmp_path, auth) == b"volume key material"
    _extend(swtpm, Event.measuring(16, b"cap", "phase", "cap"))
    assert _unseal(swtpm, tmp_path, auth) is None  # capped: no longer


def test_sealed_to_policy_or_of_two_modes(swtpm: Swtpm, tmp_path: Path) -> None:
    """PolicyOR over two predicted PCR states: the object unseals in the second one."""
    mode_a = [Event.measuring(23, b"mode=normal", "cmdline", "normal")]
    mode_b = [Event.measuring(23, b"mode=admin", "cmdline", "admin")]
    branches = [policy_pcr({23: replay(m)[Bank.SHA256][23]}, Bank.SHA256) for m in (mode_a, mode_b)]
    _seal(swtpm, tmp_path, policy_or(branches), b"or-secret")
    for i, b in enumerate(branches):
        (tmp_path / f"branch{i}").write_bytes(b)
    _extend(swtpm, mode_b[0])
    s = str(tmp_path / "session.ctx")
    tools(swtpm, "tpm2_createprimary", "-C", "o", "-c", str(tmp_path / "primary.ctx"))
    tools(
        swtpm, "tpm2_load", "-C", str(tmp_path / "primary.ctx"), "-u", str(tmp_path / "seal.pub"),
        "-r", str(tmp_path / "seal.priv"), "-c", str(tmp_path / "seal.ctx"),
    )  # fmt: skip
    tools(swtpm, "tpm2_flushcontext", "-t")
    tools(swtpm, "tpm2_startauthsession", "--policy-session", "-S", s)
    tools(swtpm, "tpm2_policypcr", "-S", s, "-l", "sha256:23")
    tools(
        swtpm, "tpm2_policyor", "-S", s,
        f"sha256:{tmp_path / 'branch0'},{tmp_path / 'branch1'}",
    )  # fmt: skip
    out = tools(swtpm, "tpm2_unseal", "-c", str(tmp_path / "seal.ctx"), "-p", f"session:{s}")
    assert out == b"or-secret"
