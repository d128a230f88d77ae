"""The installer disk image booted through the firmware in QEMU (TCG, -smp 1): SeaBIOS
and OVMF, each in two modes, into GRUB (from the MBR/BIOS boot partition or the ESP),
tboot (multiboot2), the host's kernel and a busybox initramfs that prints the guest's
PCR 17-19 and a marker, then powers off.

QEMU has no TXT: tboot reports the CPU as unable to launch ("Non-Intel CPU detected"
on QEMU's default AMD-flavoured CPU model, "CPU does not support SMX" on an Intel one),
finds no SINIT ACM, and hands over to the kernel without a late launch and without
touching the TPM's PCR 17-19. The rig's emulated late launch (performed over swtpm's
control channel when the firmware starts the TPM) therefore survives to the kernel:
the guest must read exactly the PCR values `builder.tboot.launch.predict` gives for
that mode's modules.

The rig's `boot()` only does direct kernel boots (`-kernel`), so the disk boot is run
here from the rig's parts: its swtpm process, its TPM proxy and its console reader.
"""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from pathlib import Path

import pytest

from builder import installer
from builder.banks import Bank
from builder.platform import load_platform
from builder.rig import qemu as rig
from builder.rig.console import parse_pcrs
from builder.rig.launch import LaunchPlan as RigPlan
from builder.rig.tpmproxy import TpmProxy
from builder.run import require_tool
from builder.tboot import grub, launch, vlp
from builder.tboot.mlehash import load_mle
from builder.tboot.modules import BootModule, ModuleKind
from tests.installer_kit import MARKER, Inputs, host_kernel, make_inputs

pytestmark = pytest.mark.qemu

BOOT_TIMEOUT = 180.0
BANKS = (Bank.SHA1, Bank.SHA256)


def predicted(inputs: Inputs, mode: str) -> tuple[RigPlan, dict[Bank, dict[int, bytes]]]:
    """The rig's late launch for `mode` and the PCR 17-19 it must leave in the guest."""
    platform = load_platform("qemu-swtpm")
    files = inputs.spec.boot_files
    cmdline = grub.kernel_cmdline("console=ttyS0 panic=-1", root_hash=inputs.root_hash, mode=mode)
    policy = vlp.policy_for_modules(
        [
            vlp.PolicyModule(0, cmdline, files["vmlinuz"]),
            vlp.PolicyModule(1, "", files["initrd.img"]),
        ]
    )
    plan = launch.launch_plan(
        platform,
        mle=load_mle(files["tboot.gz"].read_bytes()),
        tboot_name="tboot.gz",
        tboot_cmdline=grub.render_tboot_cmdline(),
        modules=[
            BootModule("vmlinuz", ModuleKind.KERNEL, cmdline, files["vmlinuz"].read_bytes()),
            BootModule("initrd.img", ModuleKind.INITRD, "", files["initrd.img"].read_bytes()),
        ],
        policy=policy,
    )
    data, extends = launch.rig_launch(plan)
    return RigPlan(data, extends), launch.predict(platform, plan)


def boot_disk(disk: Path, *, uefi: bool, plan: RigPlan, work: Path) -> rig.BootResult:
    """Boot `disk` (read-only: snapshot=on) through the firmware with the rig's TPM."""
    qemu = require_tool("qemu-system-x86_64", "boot the installer image")
    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        ctrl = stack.enter_context(rig.SwtpmProcess(work / "tpm", work / "swtpm.log"))
        proxy = stack.enter_context(TpmProxy(work / "tpm-ctrl.sock", ctrl, plan))
        argv = [qemu, "-accel", "tcg", "-m", "512", "-smp", "1", "-nodefaults", "-no-reboot"]
        argv += ["-display", "none", "-serial", "stdio", "-monitor", "none"]
        if uefi:
            vars_copy = work / "OVMF_VARS.fd"
            shutil.copyfile(rig.OVMF_VARS, vars_copy)
            argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={rig.OVMF_CODE}"]
            argv += ["-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
        argv += ["-drive", f"file={os.fspath(disk)},if=virtio,format=raw,snapshot=on"]
        argv += ["-chardev", f"socket,id=chrtpm,path={proxy.listen_path}"]
        argv += ["-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]
        log = stack.enter_context(open(work / "console.log", "w"))  # noqa: SIM115

        def line_seen(line: str) -> None:
            log.write(line + "\n")
            log.flush()

        result = rig._run_qemu(argv, MARKER, BOOT_TIMEOUT, 10.0, line_seen)
        result.proxy = proxy.stats
        return result


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Inputs, Path]]:
    """One disk image per mode booted (GRUB's default entry is that mode)."""
    out = {}
    for mode in ("normal", "admin"):
        work = tmp_path_factory.mktemp(f"disk-{mode}")
        inputs = make_inputs(work / "in", default=mode)
        image = installer.assemble(inputs.spec, work / "installer.img", compress=False)
        out[mode] = (inputs, image.path)
    return out


@pytest.mark.parametrize(
    ("firmware", "mode"),
    [("bios", "normal"), ("bios", "admin"), ("uefi", "normal"), ("uefi", "admin")],
)
def test_firmware_grub_tboot_kernel_marker(
    images: dict[str, tuple[Inputs, Path]], tmp_path: Path, firmware: str, mode: str
) -> None:
    inputs, disk = images[mode]
    plan, expected = predicted(inputs, mode)
    result = boot_disk(disk, uefi=firmware == "uefi", plan=plan, work=tmp_path)
    console = result.console
    assert result.outcome is rig.Outcome.MARKER, console[-4000:]
    assert result.proxy.errors == [] and result.proxy.launches == 1
    # GRUB found the boot partition and ran that mode's entry.
    assert f"looking for the boot partition {inputs.spec.boot_uuid}" in console
    assert f"actvsm: measured launch, mode {mode}" in console
    # tboot ran, saw no TXT, and handed over to the kernel without a launch.
    assert "TBOOT: command line: " + grub.render_tboot_cmdline() in console
    assert "TBOOT: Non-Intel CPU detected." in console
    assert "TBOOT: SINIT ACM not provided." in console
    assert "TBOOT: transfering control to kernel" in console
    if firmware == "uefi":
        assert "TBOOT: EFI memmap:" in console
    else:
        assert "TBOOT: Failed to get EFI memory map" in console
    marker = next(ln for ln in console.splitlines() if MARKER in ln)
    assert f"actvsm.mode={mode}" in marker and f"roothash={inputs.root_hash}" in marker
    # The emulated late launch's PCRs reached the kernel as predicted for this mode.
    seen = parse_pcrs(console)
    assert len(seen) == 1
    for bank in seen[0]:
        assert seen[0][bank] == {p: expected[bank][p] for p in (17, 18, 19)}, bank
    assert Bank.SHA256 in seen[0]


def test_modes_predict_different_pcrs(images: dict[str, tuple[Inputs, Path]]) -> None:
    normal = predicted(images["normal"][0], "normal")[1]
    admin = predicted(images["admin"][0], "admin")[1]
    assert normal[Bank.SHA256][18] != admin[Bank.SHA256][18]
    assert host_kernel().is_file()
