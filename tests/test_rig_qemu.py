"""Real QEMU boots through the rig: the guest's PCRs are the late launch's predictions.

The probe initramfs is built by `builder.initramfs_archive` from the host's root tree
(Debian 12, like the base) with the host's kernel; the guest reads PCR 17/18/19 from
sysfs, which the kernel gets from the TPM, so swtpm is the judge of our replay.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.banks import Bank
from builder.initramfs_archive import Compression
from builder.pcr import Event, replay
from builder.rig.console import extract_file, parse_pcrs
from builder.rig.launch import LaunchPlan
from builder.rig.probe import DONE, PROBE_BANKS, ProbeOptions, build_probe
from builder.rig.qemu import BootResult, BootSpec, Outcome, boot, overlay_disk

pytestmark = pytest.mark.qemu

APPEND = "console=ttyS0 panic=-1 quiet"


def host_kernel() -> tuple[Path, str]:
    """The newest /boot/vmlinuz-* whose modules are installed on the host."""
    for kernel in sorted(Path("/boot").glob("vmlinuz-*"), reverse=True):
        kver = kernel.name.removeprefix("vmlinuz-")
        if Path("/lib/modules", kver, "modules.dep").exists():
            return kernel, kver
    pytest.fail("no /boot/vmlinuz-* with modules: apt-get install linux-image-amd64")


def plan(kernel_digest_of: bytes) -> LaunchPlan:
    banks = PROBE_BANKS
    return LaunchPlan(
        hash_data=b"emulated SINIT/MLE " * 300,
        extends=[
            (2, Event.measuring(18, kernel_digest_of, "kernel", "vmlinuz", banks=banks)),
            (3, Event.measuring(17, b"launch policy", "vlp", "policy", banks=banks)),
            (2, Event.measuring(19, b"initramfs", "initrd", "initrd", banks=banks)),
            (3, Event.measuring(18, b"command line", "cmdline", "cmdline", banks=banks)),
        ],
    )


def launched_pcrs(result: BootResult) -> list[dict[Bank, dict[int, bytes]]]:
    assert result.outcome is Outcome.MARKER, result.console[-3000:]
    assert result.proxy.errors == []
    boots = parse_pcrs(result.console)
    return [{b: {p: v for p, v in pcrs.items() if p != 0} for b, pcrs in x.items()} for x in boots]


def test_guest_sees_the_launch_and_a_reset_repeats_it(tmp_path: Path) -> None:
    kernel, kver = host_kernel()
    initrd = tmp_path / "probe.gz"
    options = ProbeOptions(kver, ("virtio_pci", "virtio_blk"), reboot_once=True)
    build_probe(Path("/"), options, initrd)
    base = tmp_path / "counter.img"  # stands for a build output the boot must not change
    base.write_bytes(bytes(1 << 20))
    disk = overlay_disk(base, tmp_path / "state/counter.qcow2")
    the_plan = plan(b"kernel A")
    spec = BootSpec(kernel, initrd, APPEND, the_plan, disks=[disk], allow_reboot=True)
    result = boot(spec, marker=DONE, timeout=180, console_log=tmp_path / "console.log")

    boots = launched_pcrs(result)
    expected = replay(the_plan.events(PROBE_BANKS), PROBE_BANKS)
    assert len(boots) == 2  # before and after the guest's reboot
    assert boots[0] == expected and boots[1] == expected
    assert result.proxy.launches == 2
    assert "ACTVSM-REBOOT" in result.console
    assert base.read_bytes() == bytes(1 << 20)  # the guest wrote to the overlay only
    assert "virtio_blk" in result.console.split("ACTVSM-MODULES", 1)[1].splitlines()[0]
    # The firmware's own log (SeaBIOS measured PCR 0-7), as a TCG2 crypto-agile log.
    log = extract_file(result.console, "eventlog")
    assert b"Spec ID Event03" in log[:200]
    (tmp_path / "eventlog.bin").write_bytes(log)


def test_another_plan_gives_other_values(tmp_path: Path) -> None:
    kernel, kver = host_kernel()
    initrd = tmp_path / "probe.zst"  # the kernel also reads our zstd frames
    build_probe(Path("/"), ProbeOptions(kver, send_eventlog=False), initrd, Compression.ZSTD)
    plan_a, plan_b = plan(b"kernel A"), plan(b"kernel B")
    result = boot(BootSpec(kernel, initrd, APPEND, plan_b), marker=DONE, timeout=150)

    [pcrs] = launched_pcrs(result)
    assert pcrs == replay(plan_b.events(PROBE_BANKS), PROBE_BANKS)
    predicted_a = replay(plan_a.events(PROBE_BANKS), PROBE_BANKS)
    for bank in PROBE_BANKS:
        assert pcrs[bank][18] != predicted_a[bank][18]
        assert pcrs[bank][17] == predicted_a[bank][17]  # PCR 17 does not see the kernel


@pytest.mark.slow
def test_uefi_firmware_gets_the_same_launch(tmp_path: Path) -> None:
    kernel, kver = host_kernel()
    initrd = tmp_path / "probe.gz"
    build_probe(Path("/"), ProbeOptions(kver, send_eventlog=False), initrd)
    the_plan = plan(b"kernel A")
    result = boot(BootSpec(kernel, initrd, APPEND, the_plan, uefi=True), marker=DONE, timeout=180)
    [pcrs] = launched_pcrs(result)
    assert pcrs == replay(the_plan.events(PROBE_BANKS), PROBE_BANKS)


def test_boot_ends_at_the_host_timeout_and_cleans_up(tmp_path: Path) -> None:
    kernel, kver = host_kernel()
    initrd = tmp_path / "probe.gz"
    build_probe(Path("/"), ProbeOptions(kver, send_eventlog=False), initrd)
    state = tmp_path / "tpm"
    result = boot(
        BootSpec(kernel, initrd, APPEND, plan(b"k")), marker=DONE, timeout=2, state_dir=state
    )
    assert result.outcome is Outcome.TIMEOUT and result.qemu_returncode is None
    assert not processes_mentioning(str(tmp_path))


def test_qemu_failing_to_start_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-kernel"
    result = boot(
        BootSpec(missing, missing, APPEND, plan(b"k")),
        marker=DONE,
        timeout=60,
        state_dir=tmp_path / "tpm",
    )
    assert result.outcome is Outcome.EXITED and result.qemu_returncode not in (0, None)
    assert "no-such-kernel" in result.console
    assert not processes_mentioning(str(tmp_path))


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found
