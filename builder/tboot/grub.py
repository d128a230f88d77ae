"""Rendering the launch files: GRUB configuration, tboot command line, NV provisioning.

Takes plain parameters (mode -> kernel command line, file names) so the image pipeline
can call it however its configuration is shaped. Every command line is checked to pass
through GRUB unchanged (`modules.check_cmdline`), since that exact string is measured.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import jinja2

from builder.errors import InputError
from builder.paths import TEMPLATES
from builder.tboot.modules import check_cmdline

TPM2_VLP_INDEX = 0x01C10131  # SINIT with tpm_nv_index_set; else 0x01200001
TPM2_VLP_INDEX_OLD = 0x01200001
TPM12_VLP_INDEX = 0x20000001
TPM2_VLP_ATTRIBUTES = "ownerwrite|ownerread|authread|no_da"

_FILE = re.compile(r"[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*")
_MODE = re.compile(r"[a-z][a-z0-9_-]*")


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - shell/GRUB text, inputs validated above
    )


def _check_file(name: str, what: str) -> None:
    if not _FILE.fullmatch(name):
        raise InputError(
            f"{what}: file name {name!r} is not safe to write in a GRUB command",
            hint="use letters, digits and _.+- (and / between directories)",
        )


@dataclass(frozen=True)
class BootEntry:
    """One GRUB menu entry = one boot mode."""

    mode: str
    title: str
    tboot: str
    tboot_cmdline: str
    kernel: str
    kernel_cmdline: str
    initrd: str
    sinit: tuple[str, ...] = field(default_factory=tuple)

    def validate(self) -> None:
        if not _MODE.fullmatch(self.mode):
            raise InputError(f"mode name {self.mode!r}: use lower-case letters, digits, _ and -")
        if "'" in self.title or "\n" in self.title or "\\" in self.title:
            raise InputError(f"mode {self.mode}: menu title must not contain quotes or newlines")
        for name, what in [
            (self.tboot, "tboot"),
            (self.kernel, "kernel"),
            (self.initrd, "initrd"),
            *((s, "SINIT ACM") for s in self.sinit),
        ]:
            _check_file(name, f"mode {self.mode}: {what}")
        check_cmdline(self.tboot_cmdline, f"mode {self.mode}: tboot")
        check_cmdline(self.kernel_cmdline, f"mode {self.mode}: kernel")


def kernel_cmdline(
    base: str, *, root_hash: str, mode: str, root_hash_param: str = "roothash"
) -> str:
    """The kernel command line of a mode: base arguments, verity root hash, mode."""
    if not re.fullmatch(r"[0-9a-f]{64,128}", root_hash):
        raise InputError(f"verity root hash {root_hash!r} must be lower-case hex")
    words = [w for w in base.split(" ") if w] + [
        f"{root_hash_param}={root_hash}",
        f"actvsm.mode={mode}",
    ]
    line = " ".join(words)
    check_cmdline(line, f"mode {mode}: kernel")
    return line


def render_tboot_cmdline(
    *,
    extpol: str | None = "sha256",
    logging: str = "serial,memory,vga",
    serial: str | None = "115200,8n1,0x3f8",
    extra: Sequence[str] = (),
) -> str:
    """tboot's command line (no newline). extpol None for TPM 1.2 (SHA-1 only)."""
    line = (
        _env()
        .get_template("tboot-cmdline.j2")
        .render(extpol=extpol, logging=logging, serial=serial, extra=list(extra))
        .strip()
    )
    check_cmdline(line, "tboot")
    return line


def render_grub_config(
    entries: Sequence[BootEntry],
    *,
    image: str,
    firmware: str,
    boot_dir: str = "/boot",
    boot_uuid: str | None = None,
    boot_label: str | None = None,
    fs_module: str = "ext2",
    timeout: int = 3,
    default: str | None = None,
) -> str:
    """grub.cfg with one multiboot2 entry per mode, for `firmware` bios or uefi."""
    if firmware not in ("bios", "uefi"):
        raise InputError(f"firmware must be bios or uefi, not {firmware!r}")
    if not entries:
        raise InputError("no boot modes: the GRUB configuration needs at least one entry")
    modes = [e.mode for e in entries]
    if len(set(modes)) != len(modes):
        raise InputError(f"boot modes listed twice: {modes}")
    for e in entries:
        e.validate()
    if boot_dir != "" and not _FILE.fullmatch(boot_dir.lstrip("/")):
        raise InputError(f"boot directory {boot_dir!r} is not safe in a GRUB command")
    for value, what in ((boot_uuid, "boot_uuid"), (boot_label, "boot_label")):
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise InputError(f"{what} {value!r}: use letters, digits, _ and -")
    if fs_module not in ("ext2", "fat", "iso9660", "squash4", "xfs", "btrfs"):
        raise InputError(f"unknown GRUB file system module {fs_module!r}")
    return (
        _env()
        .get_template("grub.cfg.j2")
        .render(
            entries=entries,
            image=image,
            firmware=firmware,
            boot_dir=boot_dir.rstrip("/"),
            boot_uuid=boot_uuid,
            boot_label=boot_label,
            fs_module=fs_module,
            timeout=int(timeout),
            default=f"actvsm-{default or entries[0].mode}",
        )
    )


def mode_entries(
    kernel_cmdlines: Mapping[str, str],
    *,
    image: str,
    tboot: str,
    tboot_cmdline: str,
    kernel: str,
    initrd: str,
    sinit: Sequence[str] = (),
) -> list[BootEntry]:
    """Entries for each mode (mode -> kernel command line), sharing every other file."""
    return [
        BootEntry(
            mode, f"{image} ({mode})", tboot, tboot_cmdline, kernel, cmd, initrd, tuple(sinit)
        )
        for mode, cmd in kernel_cmdlines.items()
    ]


def render_provision_script(
    policy: bytes, *, image: str, policy_file: str = "vl.pol", index: int = TPM2_VLP_INDEX
) -> str:
    """Shell script (tpm2-tools) that writes the VLP into the TPM 2.0 NV index tboot reads."""
    if index not in (TPM2_VLP_INDEX, TPM2_VLP_INDEX_OLD):
        raise InputError(
            f"NV index {index:#x}: tboot reads its policy from {TPM2_VLP_INDEX:#010x} "
            f"(or {TPM2_VLP_INDEX_OLD:#010x} with older SINIT ACMs)"
        )
    _check_file(policy_file.lstrip("/"), "policy file")
    return (
        _env()
        .get_template("provision-vlp-tpm2.sh.j2")
        .render(
            image=image,
            index=f"{index:#010x}",
            policy_file=policy_file,
            policy_sha256=hashlib.sha256(policy).hexdigest(),
            attributes=TPM2_VLP_ATTRIBUTES,
        )
    )
