"""VLP bytes against Debian's tb_polgen (the reference implementation), byte for byte."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.banks import Bank
from builder.cli import main
from builder.errors import BuildError, InputError
from builder.tboot import vlp
from builder.tboot.policyspec import load_policy_spec

ALGS = ["sha1", "sha256", "sha384", "sha512"]
TYPES = ["nonfatal", "continue", "halt"]
CMDLINE_WORDS = [
    "root=/dev/sda1",
    "ro",
    "quiet",
    "console=ttyS0,115200",
    'a="b c"',
    "x  y",
    "",
    "ünï",
    "actvsm.mode=admin",
    "$v",
    "\\",
]


def tb_polgen(*args: str | Path) -> str:
    proc = subprocess.run(
        ["tb_polgen", *map(str, args)], capture_output=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def random_spec(rng: random.Random, tmp: Path, k: int) -> tuple[dict[str, object], list[list[str]]]:
    """A random spec and the tb_polgen argument lists that say the same thing."""
    ptype, alg = rng.choice(TYPES), rng.choice(ALGS)
    control = rng.choice([None, 0, 1])
    create = ["--create", "--type", ptype, "--alg", alg]
    spec: dict[str, object] = {"type": ptype, "alg": alg}
    if control is not None:
        spec["control"] = control
        create += ["--ctrl", str(control)]
    nums = rng.sample(range(0, 128), rng.randint(0, 4))
    if rng.random() < 0.3:
        nums.append("any")  # type: ignore[arg-type]
    entries = []
    adds: list[list[str]] = []
    for n, num in enumerate(nums):
        pcr = rng.choice([17, 18, 19, 22, 0, 23, "none"])
        htype = "any" if rng.random() < 0.25 else "image"
        entry: dict[str, object] = {"num": num, "pcr": pcr, "hash": htype}
        base = ["--add", "--num", str(num), "--pcr", str(pcr), "--hash", htype]
        if htype == "any":
            adds.append(base)
        else:
            hashes = []
            for j in range(rng.randint(1, 3)):
                raw = rng.randbytes(rng.choice([0, 1, 100, 4096, 20000]))
                name = f"img{k}-{n}-{j}"
                if rng.random() < 0.4:
                    name += ".gz"
                    (tmp / name).write_bytes(gzip.compress(raw, mtime=0))
                else:
                    (tmp / name).write_bytes(raw)
                cmdline = " ".join(rng.sample(CMDLINE_WORDS, rng.randint(0, 4)))
                hashes.append({"cmdline": cmdline, "image": name})
                adds.append([*base, "--cmdline", cmdline, "--image", str(tmp / name)])
            entry["hashes"] = hashes
        entries.append(entry)
    spec["entries"] = entries
    return spec, [create, *adds]


def test_random_policies_match_tb_polgen(tmp_path: Path) -> None:
    rng = random.Random(20261127)
    for k in range(60):
        spec, commands = random_spec(rng, tmp_path, k)
        spec_file = tmp_path / f"spec{k}.yaml"
        spec_file.write_text(yaml.safe_dump(spec, allow_unicode=True))
        ours = tmp_path / f"ours{k}.pol"
        assert main(["policy", "create", str(spec_file), "-o", str(ours)]) == 0
        theirs = tmp_path / f"theirs{k}.pol"
        for args in commands:
            tb_polgen(*args, theirs)
        assert ours.read_bytes() == theirs.read_bytes(), f"case {k}: {spec}"
        assert tb_polgen("--show", ours) == tb_polgen("--show", theirs)
        assert vlp.Policy.from_bytes(theirs.read_bytes()).to_bytes() == theirs.read_bytes()


def test_add_sequences_follow_tb_polgen_lookup(tmp_path: Path) -> None:
    """Repeated numbers, changed PCRs and an early `any` entry: tb_polgen's own quirks."""
    rng = random.Random(7)
    image = tmp_path / "img"
    image.write_bytes(b"kernel bytes")
    for k in range(12):
        alg = rng.choice(ALGS)
        theirs = tmp_path / f"q{k}.pol"
        tb_polgen("--create", "--type", "halt", "--alg", alg, theirs)
        ops = []
        for _ in range(rng.randint(1, 6)):
            num = rng.choice(["0", "1", "2", "any"])
            pcr = rng.choice(["17", "19", "none"])
            htype = rng.choice(["image", "image", "any"])
            args = ["--add", "--num", num, "--pcr", pcr, "--hash", htype]
            cmdline = rng.choice(["", "a b", "root=/dev/vda"])
            if htype == "image":
                args += ["--cmdline", cmdline, "--image", str(image)]
            tb_polgen(*args, theirs)
            ops.append(
                vlp.AddOp(
                    vlp.MOD_ANY if num == "any" else int(num),
                    vlp.PCR_NONE if pcr == "none" else int(pcr),
                    vlp.HashType.IMAGE if htype == "image" else vlp.HashType.ANY,
                    cmdline,
                    image.read_bytes() if htype == "image" else None,
                )
            )
        ours = vlp.apply_adds(vlp.PolicyType.HALT, Bank(alg), 1, ops).to_bytes()
        assert ours == theirs.read_bytes(), f"case {k}: {ops}"


def test_policy_for_modules_matches_tb_polgen(tmp_path: Path) -> None:
    kernel, initrd = b"K" * 3000, b"I" * 5000
    (tmp_path / "k").write_bytes(kernel)
    (tmp_path / "i.gz").write_bytes(gzip.compress(initrd))
    cmds = {"normal": "root=/dev/vda ro actvsm.mode=normal", "admin": "ro actvsm.mode=admin"}
    mods = [vlp.PolicyModule(0, c, kernel) for c in cmds.values()]
    mods += [vlp.PolicyModule(1, "", tmp_path / "i.gz"), vlp.PolicyModule(1, "", initrd)]
    ours = vlp.policy_for_modules(mods, pcrs={0: None, 1: 19}, bank=Bank.SHA256)
    theirs = tmp_path / "p.pol"
    tb_polgen("--create", "--type", "halt", "--alg", "sha256", theirs)
    for c in cmds.values():
        tb_polgen(
            "--add",
            "--num",
            "0",
            "--pcr",
            "none",
            "--hash",
            "image",
            "--cmdline",
            c,
            "--image",
            tmp_path / "k",
            theirs,
        )
    tb_polgen(
        "--add",
        "--num",
        "1",
        "--pcr",
        "19",
        "--hash",
        "image",
        "--cmdline",
        "",
        "--image",
        tmp_path / "i.gz",
        theirs,
    )
    assert ours == theirs.read_bytes()


def test_policy_for_modes_numbers_like_tboot(tmp_path: Path) -> None:
    from builder.tboot.modules import BootModule, ModuleKind

    kernel = sorted(Path("/boot").glob("vmlinuz-*"))[-1]
    (tmp_path / "i.gz").write_bytes(gzip.compress(b"cpio"))
    modes = [
        [
            BootModule("vmlinuz", ModuleKind.KERNEL, f"ro actvsm.mode={m}", kernel.read_bytes()),
            BootModule("acm.bin", ModuleKind.SINIT, "", b"acm"),
            BootModule("i.gz", ModuleKind.INITRD, "", (tmp_path / "i.gz").read_bytes()),
        ]
        for m in ("normal", "admin")
    ]
    ours = vlp.policy_for_modes(modes, bank=Bank.SHA1, policy_type=vlp.PolicyType.CONTINUE)
    theirs = tmp_path / "p.pol"
    tb_polgen("--create", "--type", "continue", "--alg", "sha1", theirs)
    for m in ("normal", "admin"):
        tb_polgen(
            "--add",
            "--num",
            "0",
            "--pcr",
            "none",
            "--hash",
            "image",
            "--cmdline",
            f"ro actvsm.mode={m}",
            "--image",
            kernel,
            theirs,
        )
    tb_polgen(
        "--add",
        "--num",
        "1",
        "--pcr",
        "19",
        "--hash",
        "image",
        "--cmdline",
        "",
        "--image",
        tmp_path / "i.gz",
        theirs,
    )
    assert ours == theirs.read_bytes()
    bad = [[*modes[0], BootModule("extra", ModuleKind.OTHER, "", b"x")]]
    with pytest.raises(BuildError, match="module 2 has no launch policy entry"):
        vlp.policy_for_modes(bad)


def test_module_without_policy_entry_is_a_build_error() -> None:
    with pytest.raises(BuildError, match="module 2 has no launch policy entry"):
        vlp.policy_for_modules(
            [vlp.PolicyModule(0, "", b"k"), vlp.PolicyModule(2, "", b"x")], pcrs={0: None}
        )


def test_oversized_policy_is_a_build_error() -> None:
    mods = [vlp.PolicyModule(0, f"mode={i}", b"k") for i in range(40)]
    with pytest.raises(BuildError, match="tboot reads at most 2124"):
        vlp.policy_for_modules(mods, pcrs={0: 18}, bank=Bank.SHA512)


entry_st = st.builds(
    lambda mod, pcr, ht, n, alg_size, seed: vlp.Entry(
        mod, pcr, vlp.HashType(ht), tuple(bytes([seed + i]) * alg_size for i in range(n))
    ),
    st.sampled_from([0, 1, 5, 127, vlp.MOD_ANY]),
    st.sampled_from([0, 17, 23, vlp.PCR_NONE]),
    st.sampled_from([0, 1]),
    st.integers(0, 3),
    st.just(32),
    st.integers(0, 200),
)


@settings(max_examples=50, deadline=None)
@given(
    ptype=st.sampled_from(list(vlp.PolicyType)),
    control=st.sampled_from([0, 1]),
    entries=st.lists(entry_st, max_size=5),
)
def test_bytes_round_trip(ptype: vlp.PolicyType, control: int, entries: list[vlp.Entry]) -> None:
    pol = vlp.Policy(ptype, vlp.HALG[Bank.SHA256], control, tuple(entries))
    data = pol.to_bytes()
    assert len(data) == 12 + sum(8 + 32 * len(e.hashes) for e in entries)
    assert vlp.Policy.from_bytes(data) == pol


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_parser_never_crashes(data: bytes) -> None:
    try:
        vlp.Policy.from_bytes(data)
    except InputError:
        pass


def test_show_reads_tb_polgen_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pol = tmp_path / "t.pol"
    tb_polgen("--create", "--type", "continue", "--alg", "sha384", "--ctrl", "0", pol)
    tb_polgen("--add", "--num", "any", "--pcr", "19", "--hash", "any", pol)
    assert main(["policy", "show", "--json", str(pol)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["type"] == "continue" and shown["alg"] == "sha384" and shown["control"] == 0
    assert shown["entries"] == [
        {"num": "any", "pcr": 19, "hash": "any", "nv_index": 0, "hashes": []}
    ]


@pytest.mark.parametrize(
    ("text", "line", "field", "message"),
    [
        ("type: fatal\n", 1, "type", "type must be one of"),
        ("type: halt\nalg: md5\n", 2, "alg", "alg must be one of"),
        ("type: halt\ncontrol: 2\n", 2, "control", "control must be 0 or 1"),
        ("type: halt\ncolour: red\n", 2, "colour", "unknown field"),
        (
            "type: halt\nentries:\n  - {num: 200, pcr: 18, hash: any}\n",
            3,
            "entries[0].num",
            "num must be",
        ),
        (
            "type: halt\nentries:\n  - {num: any, pcr: 18, hash: any}\n"
            "  - {num: 1, pcr: 18, hash: any}\n",
            4,
            "entries[1].num",
            "must be the last",
        ),
        (
            "type: halt\nentries:\n  - {num: 1, pcr: 24, hash: any}\n",
            3,
            "entries[0].pcr",
            "pcr must be",
        ),
        (
            "type: halt\nentries:\n  - num: 1\n    pcr: 18\n    hash: image\n",
            5,
            "entries[0].hashes",
            "needs at least one",
        ),
        (
            "type: halt\nentries:\n  - num: 1\n    pcr: 18\n    hash: image\n    hashes:\n"
            "      - {cmdline: x, image: missing.bin}\n",
            7,
            "entries[0].hashes[0].image",
            "cannot read image",
        ),
    ],
)
def test_spec_errors_name_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, message: str
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    with pytest.raises(InputError, match=message) as info:
        load_policy_spec(spec)
    assert info.value.location is not None
    assert info.value.location.line == line
    assert info.value.location.field == field
    assert str(info.value).startswith(f"{spec}:{line}: {field}: ")


def test_cli_bad_spec_exits_2_with_json_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("type: halt\nalg: [\n")
    assert main(["policy", "create", "--json", str(spec), "-o", str(tmp_path / "o")]) == 2
    err = json.loads(capsys.readouterr().out)
    assert err["kind"] == "input" and err["file"] == str(spec)
    assert not (tmp_path / "o").exists()


_spec_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "alg",
                    "control",
                    "entries",
                    "num",
                    "pcr",
                    "hash",
                    "hashes",
                    "cmdline",
                    "image",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=15,
)


@settings(max_examples=200, deadline=None)
@given(doc=_spec_values)
def test_spec_loader_never_crashes(doc: object) -> None:
    from builder.tboot.policyspec import policy_from_spec

    base = {"type": "halt", "alg": "sha1"}
    for candidate in (doc, {**base, **doc} if isinstance(doc, dict) else doc):
        try:
            policy_from_spec(candidate, Path("/nonexistent/spec.yaml"))
        except InputError:
            pass
