"""The late-launch model against a real TPM (swtpm) and real tools.

Each launch is performed on swtpm exactly as the QEMU rig does it (Hash_Start/Data/End
at locality 4 via swtpm_ioctl, then the extends at locality 3/2 via tpm2-pytss), and
the PCRs read back must equal the prediction. Module digests are checked against the
hashes Debian's tb_polgen puts in the policy (what tboot compares them with).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import subprocess
from pathlib import Path

import pytest
from tpm2_pytss import ESAPI, ESYS_TR, TPML_DIGEST_VALUES, TPMT_HA, TCTILdr
from tpm2_pytss.types import TPML_PCR_SELECTION

from builder.banks import Bank
from builder.errors import BuildError, InputError
from builder.pcr import Event, replay
from builder.platform import Extpol, Platform, load_platform
from builder.swtpm import Swtpm
from builder.tboot import launch, vlp
from builder.tboot.mlehash import MleImage, load_mle
from builder.tboot.modules import BootModule, ModuleKind, number_modules

KERNEL = sorted(Path("/boot").glob("vmlinuz-*"))[-1]
TBOOT = Path("/boot/tboot.gz")
KERNEL_CMDLINE = "root=/dev/vda ro console=ttyS0 actvsm.mode=normal"


@pytest.fixture(scope="module")
def mle() -> MleImage:
    return load_mle(TBOOT.read_bytes())


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("boot")
    raw = random.Random(1).randbytes(200_000)
    (d / "initrd").write_bytes(raw)
    subprocess.run(["gzip", "-k", "-n", str(d / "initrd")], check=True, timeout=60)
    subprocess.run(["xz", "-k", "--check=crc32", str(d / "initrd")], check=True, timeout=60)
    (d / "sinit.bin").write_bytes(b"\x02\x00" + bytes(200))
    return {
        "initrd": d / "initrd",
        "initrd.gz": d / "initrd.gz",
        "initrd.xz": d / "initrd.xz",
        "sinit": d / "sinit.bin",
        "dir": d,
    }


def boot_modules(files: dict[str, Path], initrd: str = "initrd.gz") -> list[BootModule]:
    return [
        BootModule("vmlinuz", ModuleKind.KERNEL, KERNEL_CMDLINE, KERNEL.read_bytes()),
        BootModule(initrd, ModuleKind.INITRD, "", files[initrd].read_bytes()),
        BootModule("sinit.bin", ModuleKind.SINIT, "", files["sinit"].read_bytes()),
    ]


def polgen_policy(
    tmp: Path,
    alg: str,
    ptype: str = "halt",
    k_pcr: str = "none",
    initrd: Path | None = None,
    cmdline: str = KERNEL_CMDLINE,
) -> bytes:
    """The policy Debian's tb_polgen makes for kernel (module 0) + initrd (module 1)."""
    pol = tmp / f"vl-{alg}-{ptype}-{k_pcr}.pol"
    pol.unlink(missing_ok=True)

    def polgen(*args: str | Path) -> None:
        subprocess.run(["tb_polgen", *map(str, args)], check=True, capture_output=True, timeout=60)

    polgen("--create", "--type", ptype, "--alg", alg, pol)
    polgen(
        "--add",
        "--num",
        "0",
        "--pcr",
        k_pcr,
        "--hash",
        "image",
        "--cmdline",
        cmdline,
        "--image",
        KERNEL,
        pol,
    )
    if initrd is not None:
        polgen(
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
            initrd,
            pol,
        )
    return pol.read_bytes()


def perform_on_swtpm(tpm: Swtpm, hash_start_data: bytes, extends: list[tuple[int, Event]]) -> None:
    """What the QEMU rig does: late launch at locality 4, then each extend at its locality."""
    subprocess.run(
        ["swtpm_ioctl", "--tcp", f"127.0.0.1:{tpm.ctrl_port}", "-h", "-"],
        input=hash_start_data,
        check=True,
        timeout=30,
        capture_output=True,
    )
    tcti = TCTILdr("swtpm", f"host=127.0.0.1,port={tpm.port}")
    ctx = ESAPI(tcti)
    try:
        for locality, ev in extends:
            tcti.set_locality(locality)
            values = []
            for bank, digest in ev.digests.items():
                ha = TPMT_HA(hashAlg=bank.alg_id)
                setattr(ha.digest, bank.value, digest)
                values.append(ha)
            ctx.pcr_extend(getattr(ESYS_TR, f"PCR{ev.pcr}"), TPML_DIGEST_VALUES(values))
        tcti.set_locality(0)
    finally:
        ctx.close()


def read_pcrs(tpm: Swtpm, banks: tuple[Bank, ...]) -> dict[Bank, dict[int, bytes]]:
    tcti = TCTILdr("swtpm", f"host=127.0.0.1,port={tpm.port}")
    ctx = ESAPI(tcti)
    try:
        out: dict[Bank, dict[int, bytes]] = {}
        for bank in banks:
            _, _, vals = ctx.pcr_read(TPML_PCR_SELECTION.parse(f"{bank.value}:17,18,19"))
            out[bank] = {p: bytes(v) for p, v in zip((17, 18, 19), vals, strict=True)}
        return out
    finally:
        ctx.close()


CASES = [
    (profile, extpol, "sha256" if extpol in (Extpol.EMBEDDED, Extpol.AGILE) else extpol.value)
    for profile in ("qemu-swtpm", "qemu-swtpm-legacy")
    for extpol in Extpol
]


@pytest.mark.parametrize(("profile", "extpol", "alg"), CASES)
def test_prediction_equals_swtpm(
    swtpm: Swtpm,
    mle: MleImage,
    files: dict[str, Path],
    tmp_path: Path,
    profile: str,
    extpol: Extpol,
    alg: str,
) -> None:
    platform = dataclasses.replace(load_platform(profile), extpol=extpol)
    policy = polgen_policy(tmp_path, alg, k_pcr="18", initrd=files["initrd"])
    tboot_cmdline = f"logging=serial,memory extpol={extpol.value}"
    plan = launch.launch_plan(
        platform,
        mle=mle,
        tboot_name="tboot.gz",
        tboot_cmdline=tboot_cmdline,
        modules=boot_modules(files),
        policy=policy,
    )
    data, extends = launch.rig_launch(plan)
    perform_on_swtpm(swtpm, data, extends)
    assert read_pcrs(swtpm, platform.banks) == launch.predict(platform, plan)

    tboot_events = [e for e in plan.events if e.kind.startswith("tboot.")]
    modules = [e for e in tboot_events if e.kind == "tboot.module"]
    fixed = extpol not in (Extpol.EMBEDDED, Extpol.AGILE)
    # tboot measured each module as tb_polgen hashed it: the policy check passes
    assert {e.details["policy_check"] for e in modules} == (
        {"match"} if fixed else {"not checked (extpol embedded/agile)"}
    )
    # module 0 is measured twice (always, plus its entry's PCR 18); the SINIT ACM never
    assert [(e.pcr, e.details["module"]) for e in modules] == [
        (17 if platform.mapping == "da" else 18, "0"),
        (18, "0"),
        (19, "1"),
    ]
    # tboot's extends carry only the extpol bank (or all of them)
    expected_banks = set(platform.banks) if not fixed else {Bank(extpol.value)}
    assert all(set(e.digests) == expected_banks for e in tboot_events)
    # the MLE hash event equals lcp2_mlehash with tboot's command line, in every bank
    mle_event = next(e for e in plan.events if e.kind == "txt.mle_hash")
    for bank in (Bank.SHA1, Bank.SHA256):
        out = (
            subprocess.run(
                [
                    "lcp2_mlehash",
                    "--create",
                    "--alg",
                    bank.value,
                    "--cmdline",
                    tboot_cmdline,
                    str(TBOOT),
                ],
                capture_output=True,
                check=True,
                timeout=60,
            )
            .stdout.decode()
            .replace(" ", "")
            .strip()
        )
        assert mle_event.digests[bank].hex() == out


TPM12_PROFILE = """\
name: tpm12-rig
tpm: "1.2"
mapping: legacy
banks: [sha1]
hash_start: {data: "tpm 1.2 SINIT stand-in"}
events:
  - {pcr: 17, type: BIOSAC_REG_DATA, data: "biosac"}
  - {pcr: 18, type: MLE_HASH}
"""


def test_tpm12_prediction_equals_sha1_bank(
    swtpm: Swtpm, mle: MleImage, files: dict[str, Path], tmp_path: Path
) -> None:
    """TPM 1.2: SHA-1 everywhere, legacy mapping, extpol on tboot's command line ignored."""
    profile = tmp_path / "tpm12.yaml"
    profile.write_text(TPM12_PROFILE)
    platform = load_platform(str(profile))
    policy = polgen_policy(tmp_path, "sha1", k_pcr="none", initrd=files["initrd"])
    plan = launch.launch_plan(
        platform,
        mle=mle,
        tboot_name="tboot.gz",
        tboot_cmdline="logging=vga extpol=sha256",
        modules=boot_modules(files),
        policy=policy,
    )
    assert all(set(e.digests) == {Bank.SHA1} for e in plan.events)
    data, extends = launch.rig_launch(plan)
    perform_on_swtpm(swtpm, data, extends)
    assert read_pcrs(swtpm, (Bank.SHA1,)) == launch.predict(platform, plan)
    assert [(e.pcr, e.kind) for e in plan.tboot] == [
        (17, "tboot.policy"),
        (18, "tboot.module"),
        (19, "tboot.module"),
    ]


def test_policy_event_formula_and_hash_alg_0_rewrite(
    mle: MleImage, files: dict[str, Path], tmp_path: Path
) -> None:
    platform = load_platform("qemu-swtpm-legacy")
    policy = polgen_policy(tmp_path, "sha256", k_pcr="none", initrd=files["initrd"])
    plan = launch.launch_plan(
        platform,
        mle=mle,
        tboot_name="t",
        tboot_cmdline="",
        modules=boot_modules(files),
        policy=policy,
    )
    ev = next(e for e in plan.events if e.kind == "tboot.policy")
    h = hashlib.sha256
    assert ev.digests[Bank.SHA256] == h(b"\x01\x00\x00\x00" + h(policy).digest()).digest()
    # control 0: the inner hash is zeros
    pol0 = bytearray(policy)
    pol0[3] = 0
    plan0 = launch.launch_plan(
        platform,
        mle=mle,
        tboot_name="t",
        tboot_cmdline="",
        modules=boot_modules(files),
        policy=bytes(pol0),
    )
    ev0 = next(e for e in plan0.events if e.kind == "tboot.policy")
    assert ev0.digests[Bank.SHA256] == h(bytes(4) + bytes(32)).digest()
    # a tboot < 1.9 SHA-1 policy (hash_alg 0) is hashed as if it said 4
    sha1_pol = polgen_policy(
        tmp_path, "sha1", ptype="nonfatal", k_pcr="none", initrd=files["initrd"]
    )
    legacy = sha1_pol[:2] + b"\x00" + sha1_pol[3:]
    p1 = dataclasses.replace(platform, extpol=Extpol.SHA1)
    ev_legacy = next(
        e
        for e in launch.launch_plan(
            p1,
            mle=mle,
            tboot_name="t",
            tboot_cmdline="extpol=sha1",
            modules=boot_modules(files),
            policy=legacy,
        ).events
        if e.kind == "tboot.policy"
    )
    s = hashlib.sha1
    assert ev_legacy.digests[Bank.SHA1] == s(b"\x01\x00\x00\x00" + s(sha1_pol).digest()).digest()


@pytest.mark.parametrize("initrd", ["initrd.gz", "initrd.xz", "initrd"])
def test_compressed_modules_measured_decompressed(
    mle: MleImage, files: dict[str, Path], tmp_path: Path, initrd: str
) -> None:
    platform = load_platform("qemu-swtpm")
    policy = polgen_policy(tmp_path, "sha256", initrd=files["initrd"])
    plan = launch.launch_plan(
        platform,
        mle=mle,
        tboot_name="t",
        tboot_cmdline="",
        modules=boot_modules(files, initrd),
        policy=policy,
    )
    ev = next(e for e in plan.events if e.details.get("module") == "1")
    h = hashlib.sha256
    raw = files["initrd"].read_bytes()
    assert ev.digests[Bank.SHA256] == h(h(b"").digest() + h(raw).digest()).digest()
    assert ev.details["compression"] == {"initrd.gz": "gzip", "initrd.xz": "xz"}.get(initrd, "none")
    assert ev.details["image_sha256"] == h(raw).hexdigest()
    assert ev.details["policy_check"] == "match"


# Intel SecL's "computepurley" host (DA, TPM 2.0, tboot extpol=embedded, tboot's built-in
# policy): the log's own digests and the PCR values its TPM reported.
PURLEY_MLE = {
    Bank.SHA1: "ff86d5446b2cc2e7e3319048715c00aabb7dcc4e",
    Bank.SHA256: "236043f5120fce826392d2170dc84f2491367cc8d8d403ab3b83ec24ea2ca186",
}
PURLEY_MODULES = [  # (pcr, sha1, sha256): vmlinuz (module 0) and initrd (the 'any' entry)
    (
        17,
        "f3b26409294f95d0c60ea7c15ac260a2f3215e9d",
        "7b533984a9a209e70c1770205df45c7ca671cf2f90e0a83737949324e3ec1778",
    ),
    (
        17,
        "bae3f1279689eec01a102fe478dc09a23fe3294f",
        "903b84c244631fa3ff0fa18d305826a7be1e5dae8e58dc3dfe789d7457351f29",
    ),
]
PURLEY_PCRS = {
    Bank.SHA1: {
        17: "062a126250334cf1ca23091ac5db9075e0f0d129",
        18: "86da61107994a14c0d154fd87ca509f82377aa30",
    },
    Bank.SHA256: {
        17: "a24a7d102290f72d36a27bc97e5b5ce50dbde1ba1b37200385ac3c564f50f76a",
        18: "d9e55bd1c570a6408fb1368f3663ae92747241fc4d2a3622cef0efadae284d75",
    },
}


def test_real_purley_host_pcrs_reproduced() -> None:
    """Profile + tboot's default DA policy event (our bytes and formula) reproduce the PCR
    17/18 a real TXT server's TPM reported; only MLE and module digests come from its log."""
    platform = load_platform("intel-purley")
    policy = vlp.default_policy(tpm12=False, da=True, sha1=True).to_bytes()
    pol_digests = {b: launch.policy_event_digest(policy, 1, Bank.SHA256, b) for b in platform.banks}
    events = [Event(17, dict(platform.hash_start.digests or {}), "hs", "")]
    for e in platform.events:
        d = e.digests or {b: bytes.fromhex(PURLEY_MLE[b]) for b in platform.banks}
        events.append(Event(e.pcr, dict(d), e.name, ""))
    events += [Event(17, pol_digests, "pol", ""), Event(18, pol_digests, "pol", "")]
    for pcr, s1, s256 in PURLEY_MODULES:
        events.append(
            Event(pcr, {Bank.SHA1: bytes.fromhex(s1), Bank.SHA256: bytes.fromhex(s256)}, "mod", "")
        )
    values = replay(events, platform.banks)
    for bank, want in PURLEY_PCRS.items():
        assert {p: values[bank][p].hex() for p in want} == want


def test_module_without_policy_entry_is_build_error(
    mle: MleImage, files: dict[str, Path], tmp_path: Path
) -> None:
    policy = polgen_policy(tmp_path, "sha256")  # kernel only: no entry for the initrd
    with pytest.raises(BuildError, match=r"module 1 \(initrd.gz\) has no entry"):
        launch.launch_plan(
            load_platform("qemu-swtpm"),
            mle=mle,
            tboot_name="t",
            tboot_cmdline="",
            modules=boot_modules(files),
            policy=policy,
        )


def test_halt_policy_mismatch_is_build_error(
    mle: MleImage, files: dict[str, Path], tmp_path: Path
) -> None:
    other = polgen_policy(tmp_path, "sha256", initrd=files["initrd"], cmdline="ro")
    kw = dict(mle=mle, tboot_name="t", tboot_cmdline="", modules=boot_modules(files))
    with pytest.raises(BuildError, match="tboot would halt"):
        launch.launch_plan(load_platform("qemu-swtpm"), policy=other, **kw)  # type: ignore[arg-type]
    sha1 = polgen_policy(tmp_path, "sha1", initrd=files["initrd"])
    with pytest.raises(BuildError, match="sha1 hashes cannot match tboot's sha256"):
        launch.launch_plan(load_platform("qemu-swtpm"), policy=sha1, **kw)  # type: ignore[arg-type]
    lenient = polgen_policy(
        tmp_path, "sha256", ptype="nonfatal", initrd=files["initrd"], cmdline="ro"
    )
    plan = launch.launch_plan(load_platform("qemu-swtpm"), policy=lenient, **kw)  # type: ignore[arg-type]
    assert plan.tboot[2].details["policy_check"] == "mismatch (policy type continues)"


def test_too_many_measurements_is_build_error(mle: MleImage) -> None:
    kernel = BootModule("vmlinuz", ModuleKind.KERNEL, "", KERNEL.read_bytes())
    mods = [kernel] + [BootModule(f"m{i}", ModuleKind.OTHER, "", b"x") for i in range(31)]
    policy = vlp.Policy(
        vlp.PolicyType.HALT, 0x0B, 1, (vlp.Entry(vlp.MOD_ANY, 19, vlp.HashType.ANY),)
    ).to_bytes()
    with pytest.raises(BuildError, match="keeps at most 32"):
        launch.launch_plan(
            load_platform("qemu-swtpm"),
            mle=mle,
            tboot_name="t",
            tboot_cmdline="",
            modules=mods,
            policy=policy,
        )


def _kernel_patched(offset: int, value: bytes) -> bytes:
    k = bytearray(KERNEL.read_bytes())
    k[offset : offset + len(value)] = value
    return bytes(k)


@pytest.mark.parametrize(
    ("kernel", "message"),
    [
        (b"\x00" * 4096, "not a Linux bzImage"),
        (_kernel_patched(0x1F1, b"\x41"), "65 setup sectors; tboot accepts at most 64"),
        (_kernel_patched(0x206, b"\x04\x02"), "older than tboot's minimum"),
    ],
)
def test_kernel_over_tboot_limits(kernel: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        number_modules([BootModule("vmlinuz", ModuleKind.KERNEL, "", kernel)])


def test_initrd_over_initrd_addr_max() -> None:
    kernel = _kernel_patched(0x22C, (4096).to_bytes(4, "little"))
    mods = [
        BootModule("vmlinuz", ModuleKind.KERNEL, "", kernel),
        BootModule("initrd", ModuleKind.INITRD, "", bytes(4097)),
    ]
    with pytest.raises(InputError, match="initrd_addr_max allows at most 0x1000"):
        number_modules(mods)


def test_kernel_cmdline_over_tboot_buffer() -> None:
    k = KERNEL.read_bytes()
    ok = "a" * 1006
    number_modules([BootModule("vmlinuz", ModuleKind.KERNEL, ok, k)])
    with pytest.raises(InputError, match="tboot keeps at most 1006"):
        number_modules([BootModule("vmlinuz", ModuleKind.KERNEL, ok + "a", k)])


@pytest.mark.parametrize(
    "cmdline",
    [
        'root=/dev/sda "quiet"',
        "a  b",
        " a",
        "a ",
        "x=$y",
        "a;b",
        "it's",
        "a\\b",
        "a*",
        "a\tb",
        "x=(1)",
        "#c",
        "é",
    ],
)
def test_cmdline_grub_would_change_is_refused(cmdline: str) -> None:
    with pytest.raises(InputError, match="GRUB"):
        number_modules([BootModule("vmlinuz", ModuleKind.KERNEL, cmdline, KERNEL.read_bytes())])


def test_module_numbering_drops_sinit_and_first_lcp() -> None:
    k = KERNEL.read_bytes()
    mods = [
        BootModule("vmlinuz", ModuleKind.KERNEL, "", k),
        BootModule("acm1", ModuleKind.SINIT, "", b"a"),
        BootModule("initrd", ModuleKind.INITRD, "", b"i"),
        BootModule("lcp", ModuleKind.LCP, "", b"l"),
        BootModule("acm2", ModuleKind.SINIT, "", b"b"),
        BootModule("extra", ModuleKind.OTHER, "x=1", b"e"),
    ]
    assert [(m.num, m.module.name) for m in number_modules(mods)] == [
        (0, "vmlinuz"),
        (1, "initrd"),
        (2, "extra"),
    ]


def test_unpredictable_compression_is_refused() -> None:
    lzo = b"\x89LZO\x00\r\n\x1a\n" + bytes(40)
    two = __import__("gzip").compress(b"a", mtime=0) * 2
    k = KERNEL.read_bytes()
    for data, msg in ((lzo, "lzop"), (two, "several members")):
        with pytest.raises(InputError, match=msg):
            number_modules(
                [
                    BootModule("vmlinuz", ModuleKind.KERNEL, "", k),
                    BootModule("initrd", ModuleKind.INITRD, "", data),
                ]
            )


def test_extpol_must_match_tboot_cmdline(
    mle: MleImage, files: dict[str, Path], tmp_path: Path
) -> None:
    platform = dataclasses.replace(load_platform("qemu-swtpm"), extpol=Extpol.EMBEDDED)
    policy = polgen_policy(tmp_path, "sha256", initrd=files["initrd"])
    for cmdline in ("logging=serial", "extpol=sha256", "extpol=embedded extpol=sha1"):
        with pytest.raises(BuildError, match="extpol"):
            launch.launch_plan(
                platform,
                mle=mle,
                tboot_name="t",
                tboot_cmdline=cmdline,
                modules=boot_modules(files),
                policy=policy,
            )


def test_rig_needs_hash_start_data(mle: MleImage, files: dict[str, Path], tmp_path: Path) -> None:
    platform: Platform = load_platform("intel-purley")
    policy = polgen_policy(tmp_path, "sha256", initrd=files["initrd"])
    plan = launch.launch_plan(
        platform,
        mle=mle,
        tboot_name="t",
        tboot_cmdline="extpol=embedded",
        modules=boot_modules(files),
        policy=policy,
    )
    with pytest.raises(BuildError, match="needs its data"):
        launch.rig_launch(plan)
