"""The sealing policy and the token format (pure), with digests checked by a TPM."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.banks import Bank
from builder.errors import BuildError, InputError
from builder.seal import PolicySpec, build_policy
from builder.seal.inputs import load_predicted, parse_size
from builder.seal.sealer import ParentKind, SealedBlob
from builder.seal.srk import SrkAlg
from builder.seal.token import TOKEN_TYPE, make_token, parse_token
from builder.swtpm import Swtpm, tools_env

SPEC = PolicySpec((11, 17, 18, 19), Bank.SHA256)


def values(seed: int) -> dict[int, bytes]:
    return {p: bytes([seed + p]) * 32 for p in SPEC.pcrs}


def trial(tpm: Swtpm, d: Path, *steps: list[str]) -> bytes:
    """A policy digest computed by the TPM in a trial session."""
    env = tools_env(tpm)
    s = d / "trial.ctx"
    subprocess.run(["tpm2_startauthsession", "-S", s], env=env, check=True, timeout=60)
    try:
        for step in steps:
            subprocess.run([*step, "-S", str(s), "-L", str(d / "out.digest")], env=env,
                           check=True, capture_output=True, timeout=60)  # fmt: skip
    finally:
        subprocess.run(["tpm2_flushcontext", s], env=env, check=True, timeout=60)
    return (d / "out.digest").read_bytes()


def test_policy_matches_the_tpms_own_computation(swtpm: Swtpm, tmp_path: Path) -> None:
    modes = {"normal": values(1), "admin": values(2), "update": values(3)}
    policy = build_policy(modes, ["normal", "admin", "update"], SPEC)
    branch_files = []
    for mode, vals in modes.items():
        (tmp_path / f"{mode}.pcrs").write_bytes(b"".join(vals[p] for p in sorted(vals)))
        digest = trial(swtpm, tmp_path, ["tpm2_policypcr", "-l", SPEC.selection,
                                         "-f", str(tmp_path / f"{mode}.pcrs")])  # fmt: skip
        (tmp_path / f"{mode}.branch").write_bytes(digest)
        branch_files.append(str(tmp_path / f"{mode}.branch"))
        assert digest == next(b.digest for b in policy.branches if b.mode == mode)
    whole = trial(swtpm, tmp_path, ["tpm2_policyor", "-l", "sha256:" + ",".join(branch_files)])
    assert whole == policy.digest
    single = build_policy(modes, ["admin"], SPEC)
    assert single.digest == policy.branches[1].digest and single.or_branches == ()


@pytest.mark.parametrize(
    ("predicted", "modes", "message"),
    [
        ({"normal": values(1)}, ["admin"], "no predicted PCR values for mode 'admin'"),
        ({"normal": {11: bytes(32)}}, ["normal"], "no predicted value for PCR 17, 18, 19"),
        ({"normal": {**values(1), 11: bytes(20)}}, ["normal"], "PCR 11 has 20 bytes"),
        ({f"m{i}": values(i) for i in range(9)}, [f"m{i}" for i in range(9)], "exceed PolicyOR"),
        ({"normal": values(1)}, ["normal", "normal"], "twice"),
    ],
)
def test_policy_input_errors(
    predicted: dict[str, dict[int, bytes]], modes: list[str], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        build_policy(predicted, modes, SPEC)


digest32 = st.binary(min_size=32, max_size=32)
mode_values = st.fixed_dictionaries({p: digest32 for p in SPEC.pcrs})


@settings(max_examples=50, deadline=None)
@given(
    predicted=st.dictionaries(
        st.from_regex(r"[a-z]{1,8}", fullmatch=True), mode_values, min_size=1, max_size=8
    ),  # fmt: skip
    public=st.binary(min_size=1, max_size=200),
    private=st.binary(min_size=1, max_size=200),
    seed=st.binary(max_size=300),
    name=st.binary(min_size=34, max_size=34),
    kind=st.sampled_from(ParentKind),
    alg=st.sampled_from(SrkAlg),
    keyslot=st.integers(0, 31),
)
def test_token_round_trip(
    predicted: dict[str, dict[int, bytes]],
    public: bytes,
    private: bytes,
    seed: bytes,
    name: bytes,
    kind: ParentKind,
    alg: SrkAlg,
    keyslot: int,
) -> None:
    policy = build_policy(predicted, sorted(predicted), SPEC)
    blob = SealedBlob(kind, alg, name, public, private, seed)
    token = make_token(policy, blob, keyslot)
    assert token["type"] == TOKEN_TYPE and token["keyslots"] == [str(keyslot)]
    parsed = parse_token(3, token)
    assert (parsed.public, parsed.private, parsed.seed) == (public, private, seed)
    assert (parsed.kind, parsed.parent_alg, parsed.parent_name) == (kind, alg, name)
    assert parsed.keyslot == keyslot and parsed.selection == SPEC.selection
    assert parsed.policy_hash == policy.digest
    assert parsed.or_branches == policy.or_branches
    assert dict(parsed.modes) == {m: dict(v) for m, v in predicted.items()}
    assert len(parsed.or_branches) == (0 if len(predicted) == 1 else len(predicted))


def test_malformed_token_names_the_field() -> None:
    policy = build_policy({"normal": values(1)}, ["normal"], SPEC)
    token = make_token(policy, SealedBlob(ParentKind.TPM, SrkAlg.ECC, b"n", b"p", b"q"), 0)
    token["tpm2-public"] = "not base64!"
    with pytest.raises(BuildError, match="token 4 .* malformed"):
        parse_token(4, token)
    token.pop("actvsm-format")
    with pytest.raises(BuildError, match="actvsm-format"):
        parse_token(4, token)


@pytest.mark.parametrize(
    ("text", "size"), [("67108864", 64 << 20), ("64M", 64 << 20), ("1GiB", 1 << 30), ("8k", 8192)]
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_parse_size_rejects_junk() -> None:
    with pytest.raises(InputError, match="cannot read size 'lots'") as err:
        parse_size("lots")
    assert err.value.hint == "e.g. 64M or 1G"


def test_predicted_file_errors_name_the_file(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text("{not json")
    with pytest.raises(InputError, match="not JSON") as err:
        load_predicted(f, Bank.SHA256)
    assert str(f) in str(err.value)
    f.write_text('{"normal": {"eleven": "00"}}')
    with pytest.raises(InputError, match="not a PCR index"):
        load_predicted(f, Bank.SHA256)
