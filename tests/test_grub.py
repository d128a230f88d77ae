"""GRUB configuration, tboot command line and NV provisioning script."""

from __future__ import annotations

import difflib
import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.errors import InputError
from builder.swtpm import Swtpm, tools_env
from builder.tboot import grub

ROOT_HASH = "3f" * 32


def entries(modes: tuple[str, ...] = ("normal", "admin", "update")) -> list[grub.BootEntry]:
    tc = grub.render_tboot_cmdline()
    cmdlines = {
        m: grub.kernel_cmdline("console=ttyS0 ro quiet", root_hash=ROOT_HASH, mode=m) for m in modes
    }
    return grub.mode_entries(
        cmdlines,
        image="default",
        tboot="tboot.gz",
        tboot_cmdline=tc,
        kernel="vmlinuz",
        initrd="initrd.img",
        sinit=["SINIT_ACM_1.bin", "SINIT_ACM_2.bin"],
    )


def script_check(text: str, tmp: Path) -> subprocess.CompletedProcess[bytes]:
    cfg = tmp / "grub.cfg"
    cfg.write_text(text)
    return subprocess.run(["grub-script-check", str(cfg)], capture_output=True, timeout=30)


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_config_passes_grub_script_check(tmp_path: Path, firmware: str) -> None:
    text = grub.render_grub_config(
        entries(), image="default", firmware=firmware, boot_label="ACTVSM-BOOT"
    )
    result = script_check(text, tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert text.count("menuentry ") == 3
    assert ("insmod efi_gop" in text) == (firmware == "uefi")
    # the checker does catch a broken config (so the test can fail)
    assert script_check(text.replace("}\n", "", 1), tmp_path).returncode != 0


def _block(text: str, mode: str) -> list[str]:
    start = text.index(f"--id actvsm-{mode} ")
    start = text.rindex("menuentry", 0, start)
    return text[start : text.index("\n}\n", start)].splitlines()


def test_modes_differ_only_in_the_mode(tmp_path: Path) -> None:
    text = grub.render_grub_config(entries(), image="default", firmware="bios")
    normal, admin = _block(text, "normal"), _block(text, "admin")
    changed = [ln for ln in difflib.ndiff(normal, admin) if ln[:1] in "+-"]
    assert len(changed) == 6  # title/id line, echo line, kernel line (each - and +)
    assert [ln.replace("normal", "admin") for ln in normal] == admin
    kernel_line = next(ln for ln in admin if "vmlinuz" in ln)
    assert kernel_line.endswith(f"roothash={ROOT_HASH} actvsm.mode=admin")


def test_lines_carry_exactly_the_measured_strings() -> None:
    es = entries(("normal",))
    text = grub.render_grub_config(es, image="default", firmware="uefi")
    lines = [ln.strip().split(" ") for ln in _block(text, "normal")]
    args = {
        ln[1].rsplit("/", 1)[1]: " ".join(ln[2:])
        for ln in lines
        if ln[0] in ("multiboot2", "module2")
    }
    # GRUB drops the file name and joins the rest with single spaces: what tboot measures
    assert args == {
        "tboot.gz": es[0].tboot_cmdline,
        "vmlinuz": es[0].kernel_cmdline,
        "initrd.img": "",
        "SINIT_ACM_1.bin": "",
        "SINIT_ACM_2.bin": "",
    }
    order = [ln[1] for ln in lines if ln[0] in ("multiboot2", "module2")]
    assert order == [
        "/boot/tboot.gz",
        "/boot/vmlinuz",
        "/boot/initrd.img",
        "/boot/SINIT_ACM_1.bin",
        "/boot/SINIT_ACM_2.bin",
    ]


def test_tboot_cmdline() -> None:
    assert grub.render_tboot_cmdline(extpol="embedded", logging="serial", serial=None) == (
        "logging=serial extpol=embedded"
    )
    assert "extpol" not in grub.render_tboot_cmdline(extpol=None)  # TPM 1.2
    with pytest.raises(InputError, match="GRUB"):
        grub.render_tboot_cmdline(extra=['a="b c"'])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kernel": "my kernel"}, "not safe"),
        ({"initrd": "$x.img"}, "not safe"),
        ({"title": "it's"}, "title"),
        ({"mode": "Normal"}, "mode name"),
        ({"kernel_cmdline": "root=/dev/sda  ro"}, "repeated spaces"),
        ({"kernel_cmdline": "init=/bin/sh;reboot"}, "GRUB's script parser"),
        ({"tboot_cmdline": "logging=${x}"}, "GRUB's script parser"),
    ],
)
def test_bad_entries_are_input_errors(change: dict[str, str], message: str) -> None:
    import dataclasses

    bad = dataclasses.replace(entries(("normal",))[0], **change)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=message):
        grub.render_grub_config([bad], image="x", firmware="bios")


def test_config_level_errors() -> None:
    es = entries(("normal",))
    with pytest.raises(InputError, match="bios or uefi"):
        grub.render_grub_config(es, image="x", firmware="coreboot")
    with pytest.raises(InputError, match="listed twice"):
        grub.render_grub_config(es + es, image="x", firmware="bios")
    with pytest.raises(InputError, match="at least one"):
        grub.render_grub_config([], image="x", firmware="bios")
    with pytest.raises(InputError, match="lower-case hex"):
        grub.kernel_cmdline("ro", root_hash="XYZ", mode="normal")


def test_provisioning_script_writes_what_tboot_reads(swtpm: Swtpm, tmp_path: Path) -> None:
    policy = tmp_path / "vl.pol"
    subprocess.run(
        ["tb_polgen", "--create", "--type", "halt", "--alg", "sha256", str(policy)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    subprocess.run(
        ["tb_polgen", "--add", "--num", "any", "--pcr", "19", "--hash", "any", str(policy)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    script = tmp_path / "provision.sh"
    script.write_text(
        grub.render_provision_script(policy.read_bytes(), image="default", policy_file=str(policy))
    )
    assert subprocess.run(["sh", "-n", str(script)], timeout=30).returncode == 0
    env = tools_env(swtpm)
    for _ in range(2):  # a second run replaces the index
        run = subprocess.run(["sh", str(script)], env=env, capture_output=True, timeout=120)
        assert run.returncode == 0, run.stderr.decode()
    # read as tboot does: the index's own (empty) authorization
    read = subprocess.run(
        ["tpm2_nvread", "0x01c10131", "-C", "0x01c10131"],
        env=env,
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert read.stdout == policy.read_bytes()
    public = subprocess.run(
        ["tpm2_nvreadpublic", "0x01c10131"], env=env, capture_output=True, timeout=30, check=True
    ).stdout.decode()
    attrs = next(ln for ln in public.splitlines() if "friendly" in ln and "write" in ln)
    assert "authread" in attrs and "ppwrite" not in attrs and "ownerwrite" in attrs
    # the owner hierarchy alone can write it: writing with the index auth fails
    other = tmp_path / "other.pol"
    other.write_bytes(policy.read_bytes())
    denied = subprocess.run(
        ["tpm2_nvwrite", "0x01c10131", "-C", "0x01c10131", "-i", str(other)],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert denied.returncode != 0
    # a different policy file is refused before anything is written
    other.write_bytes(policy.read_bytes() + b"\0")
    refused = subprocess.run(
        ["sh", str(script), str(other)], env=env, capture_output=True, timeout=60
    )
    assert refused.returncode == 1 and b"not the policy built" in refused.stderr


def test_provisioning_index_must_be_tboots() -> None:
    with pytest.raises(InputError, match="0x01c10131"):
        grub.render_provision_script(b"x", image="d", index=0x01500000)


# --- choosing the mode: the GRUB environment block ------------------------------------


@pytest.mark.parametrize(
    "values", [{}, {"actvsm_mode": "admin"}, {"a": "1", "actvsm_mode": "x-y.z"}]
)
def test_grubenv_block_is_what_grub_editenv_writes(tmp_path: Path, values: dict[str, str]) -> None:
    env = tmp_path / "grubenv"
    subprocess.run(["grub-editenv", env, "create"], check=True, timeout=30)
    if values:
        sets = [f"{k}={v}" for k, v in values.items()]
        subprocess.run(["grub-editenv", env, "set", *sets], check=True, timeout=30)
    assert grub.grubenv_block(values) == env.read_bytes()
    assert grub.parse_grubenv(env.read_bytes()) == values


@pytest.mark.parametrize(
    "values", [{"actvsm_mode": "a b"}, {"actvsm_mode": "x\ny"}, {"1bad": "x"}, {"m": "x" * 1000}]
)
def test_grubenv_refuses_what_grub_would_escape(values: dict[str, str]) -> None:
    with pytest.raises(InputError, match="GRUB environment"):
        grub.grubenv_block(values)
    with pytest.raises(ValueError, match="not a GRUB environment block"):
        grub.parse_grubenv(b"actvsm_mode=admin\n")


def test_config_reads_the_mode_from_grubenv(tmp_path: Path) -> None:
    text = grub.render_grub_config(
        entries(), image="default", firmware="bios", boot_dir="", boot_uuid="abc-1"
    )
    assert script_check(text, tmp_path).returncode == 0
    head = text[: text.index("menuentry")]
    # after the search (so the path is on the boot partition), only that variable
    assert head.index("search ") < head.index("load_env --file /grub/grubenv actvsm_mode")
    for mode in ("normal", "admin", "update"):
        assert f'if [ "${{actvsm_mode}}" = "{mode}" ]; then\n\tset default=actvsm-{mode}\n' in head
    assert "set default=actvsm-normal\n" in head  # the build's default stays first
    slash_boot = grub.render_grub_config(entries(), image="default", firmware="uefi")
    assert "load_env --file /boot/grub/grubenv actvsm_mode" in slash_boot


_WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.=,-", min_size=1, max_size=12)
_LINE = st.lists(_WORD, max_size=5).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(
    modes=st.lists(
        st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True), min_size=1, max_size=4, unique=True
    ),
    tboot_cmdline=_LINE,
    base=_LINE,
    boot_dir=st.sampled_from(["", "/boot", "/x/y"]),
    firmware=st.sampled_from(["bios", "uefi"]),
    sinit=st.lists(st.sampled_from(["acm/a.bin", "B.BIN"]), max_size=2, unique=True),
)
def test_parse_gives_back_what_was_rendered(
    modes: list[str],
    tboot_cmdline: str,
    base: str,
    boot_dir: str,
    firmware: str,
    sinit: list[str],
) -> None:
    cmdlines = {m: grub.kernel_cmdline(base, root_hash=ROOT_HASH, mode=m) for m in modes}
    es = grub.mode_entries(
        cmdlines,
        image="img",
        tboot="tboot.gz",
        tboot_cmdline=tboot_cmdline,
        kernel="vmlinuz",
        initrd="initrd.img",
        sinit=sinit,
    )
    text = grub.render_grub_config(es, image="img", firmware=firmware, boot_dir=boot_dir)
    parsed = grub.parse_grub_config(text)
    prefix = boot_dir.strip("/") + "/" if boot_dir else ""
    assert list(parsed) == modes
    for e in es:
        p = parsed[e.mode]
        assert (p.tboot_cmdline, p.kernel_cmdline, p.initrd_cmdline) == (
            e.tboot_cmdline,
            e.kernel_cmdline,
            "",
        )
        assert (p.tboot, p.kernel, p.initrd) == tuple(
            prefix + f for f in (e.tboot, e.kernel, e.initrd)
        )
        assert p.sinit == tuple(prefix + s for s in sinit)


def test_parse_refuses_a_broken_entry() -> None:
    text = grub.render_grub_config(entries(("normal",)), image="x", firmware="bios")
    with pytest.raises(ValueError, match="expected tboot, kernel and initrd"):
        grub.parse_grub_config(re.sub(r"\tmultiboot2 .*\n", "", text))
    with pytest.raises(ValueError, match="not closed"):
        grub.parse_grub_config(text[: text.rindex("}")])
