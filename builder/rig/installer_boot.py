"""Boot a build output's installer disk image through the firmware, in a chosen mode.

The machine boots `installer.img` as a USB stick would: SeaBIOS (GRUB's boot sector
and core.img) or OVMF (the ESP's BOOTX64.EFI), GRUB, tboot, the kernel and the
initramfs, which finds the base, verity tree and volumes by their GPT names.

The mode is chosen the way an admin chooses the next boot's mode: `actvsm_mode` in the
GRUB environment block `grub/grubenv` on the boot partition, which grub.cfg reads with
`load_env`. grub.cfg is not measured (only the command lines are), so the choice
changes no PCR. The rig writes that block into a qcow2 overlay of the image (qemu-io,
at the block debugfs reports for the file), so the build output is never modified.

The late launch the rig emulates is computed from the files in the image's boot
partition: the GRUB configuration of the chosen firmware gives the mode's files and
command lines, and tboot, the kernel, the initramfs and `vl.pol` are read back with
debugfs. A file changed in the image therefore changes the PCRs the guest sees.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from builder.boot import (
    DEFAULT_TIMEOUT,
    MARKER,
    BootReport,
    load_manifest,
    pick_mode,
    prepare_state,
    report,
)
from builder.errors import BuildError, InputError
from builder.platform import load_platform
from builder.predict import boot_modules
from builder.rig.launch import LaunchPlan
from builder.rig.qemu import BootSpec, boot, overlay_disk
from builder.run import require_tool, run
from builder.tboot.grub import (
    GRUBENV_SIZE,
    MODE_VARIABLE,
    ParsedEntry,
    grubenv_block,
    parse_grub_config,
)
from builder.tboot.launch import launch_plan, rig_launch
from builder.tboot.mlehash import load_mle

IMAGE_NAME = "installer.img"
BOOT_PARTITION = "boot"  # GPT name of the ext2 boot partition
GRUBENV_PATH = "/grub/grubenv"
POLICY_PATH = "/vl.pol"
FIRMWARES = ("bios", "uefi")
_EXTENT = re.compile(r"\(0\):(\d+)")


@dataclass(frozen=True)
class Span:
    offset: int
    size: int


def partitions(image: Path) -> dict[str, Span]:
    """GPT name -> byte span, read by sfdisk."""
    sfdisk = require_tool("sfdisk", "read the installer image's partition table")
    proc = run([sfdisk, "--json", image], timeout=30, check=False)
    if proc.returncode != 0:
        raise InputError(f"{image}: not a partitioned disk image (sfdisk: {_first(proc.stderr)})")
    table = json.loads(proc.stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    return {
        p["name"]: Span(int(p["start"]) * sector, int(p["size"]) * sector)
        for p in table["partitions"]
        if "name" in p
    }


def _first(raw: bytes) -> str:
    lines = [ln for ln in raw.decode(errors="replace").splitlines() if ln.strip()]
    return lines[0] if lines else "no message"


class BootPartition:
    """Read-only access to the image's ext2 boot partition (debugfs `image?offset=N`)."""

    def __init__(self, image: Path) -> None:
        parts = partitions(image)
        if BOOT_PARTITION not in parts:
            raise InputError(f"{image} has no partition named {BOOT_PARTITION!r}")
        self.image = image
        self.span = parts[BOOT_PARTITION]
        self.debugfs = require_tool("debugfs", "read the installer's boot partition")

    @property
    def device(self) -> str:
        return f"{self.image}?offset={self.span.offset}"

    def _request(self, request: str) -> str:
        proc = run([self.debugfs, "-R", request, self.device], timeout=60, check=False)
        errors = [
            ln
            for ln in proc.stderr.decode(errors="replace").splitlines()
            if ln.strip() and not ln.startswith("debugfs ")
        ]
        if proc.returncode != 0 or errors:
            raise InputError(
                f"{self.image}: boot partition: `{request}` failed: "
                + (errors[0] if errors else f"exit {proc.returncode}")
            )
        return proc.stdout.decode(errors="replace")

    def read(self, path: str, dest: Path) -> bytes:
        """The file `path` (absolute in the partition), dumped to `dest`."""
        self._request(f"dump {path} {dest}")
        return dest.read_bytes()

    def block_size(self) -> int:
        """From the superblock (s_log_block_size at byte 1024 + 24)."""
        with open(self.image, "rb") as f:
            f.seek(self.span.offset + 1024 + 24)
            return 1024 << int.from_bytes(f.read(4), "little")

    def file_offset(self, path: str) -> int:
        """Byte offset in the disk image of `path`'s first block (a one-block file)."""
        stat = self._request(f"stat {path}")
        found = _EXTENT.search(stat)
        size = re.search(r"\bSize: (\d+)", stat)
        if found is None or size is None or int(size.group(1)) > self.block_size():
            raise InputError(f"{self.image}: {path} is not one block on the boot partition")
        return self.span.offset + int(found.group(1)) * self.block_size()


def select_mode(image: Path, overlay: Path, mode: str) -> None:
    """Write `actvsm_mode=mode` into grub/grubenv inside `overlay` (a qcow2 over `image`),
    in place, as GRUB's own save_env and grub-editenv do."""
    boot_part = BootPartition(image)
    offset = boot_part.file_offset(GRUBENV_PATH)
    qemu_io = require_tool("qemu-io", "write the GRUB environment into the disk overlay")
    with tempfile.TemporaryDirectory(prefix="actvsm-grubenv-") as tmp:
        block = Path(tmp) / "grubenv"
        block.write_bytes(grubenv_block({MODE_VARIABLE: mode}))
        proc = run(
            [qemu_io, "-f", "qcow2", "-c", f"write -q -s {block} {offset} {GRUBENV_SIZE}", overlay],
            timeout=60,
            check=False,
        )
    if proc.returncode != 0 or proc.stderr.strip():
        raise BuildError(f"qemu-io could not write the GRUB environment: {_first(proc.stderr)}")


def grub_config(boot_part: BootPartition, firmware: str, work: Path) -> dict[str, ParsedEntry]:
    name = f"/grub/grub-{firmware}.cfg"
    text = boot_part.read(name, work / f"grub-{firmware}.cfg").decode(errors="replace")
    try:
        return parse_grub_config(text)
    except ValueError as exc:
        raise InputError(f"{boot_part.image}: {name}: {exc}") from None


def plan_from_image(
    boot_part: BootPartition, entry: ParsedEntry, platform_file: Path, work: Path
) -> LaunchPlan:
    """The rig's late launch for `entry`, from the files in the image's boot partition;
    BuildError says why tboot would halt."""
    tboot = boot_part.read("/" + entry.tboot, work / "tboot")
    kernel = boot_part.read("/" + entry.kernel, work / "kernel")
    initrd = boot_part.read("/" + entry.initrd, work / "initrd")
    policy = boot_part.read(POLICY_PATH, work / "vl.pol")
    try:
        plan = launch_plan(
            load_platform(platform_file),
            mle=load_mle(tboot, entry.tboot),
            tboot_name=entry.tboot,
            tboot_cmdline=entry.tboot_cmdline,
            modules=boot_modules(kernel, initrd, entry.kernel_cmdline),
            policy=policy,
        )
        hash_data, extends = rig_launch(plan)
    except (BuildError, ValueError) as exc:
        raise BuildError(f"tboot would halt: {exc}") from None
    return LaunchPlan(hash_data, tuple(extends))


def boot_installer(
    out_dir: Path,
    mode: str | None = None,
    firmware: str = "bios",
    state_dir: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    on_line: Callable[[str], None] | None = None,
    memory_mb: int = 768,
) -> BootReport:
    """Boot `out_dir/installer.img` through `firmware` (bios: SeaBIOS, uefi: OVMF) in
    `mode` (default: GRUB's default entry) until the workload's marker.

    `state_dir` keeps the TPM (a copy of `out_dir/rig/tpm`) and the disk overlay across
    boots, as `actvsm boot --state` does; default: a fresh temporary one."""
    if firmware not in FIRMWARES:
        raise InputError(f"firmware {firmware!r}: use bios or uefi")
    manifest = load_manifest(out_dir)
    image = out_dir / IMAGE_NAME
    if not image.is_file():
        raise InputError(
            f"{out_dir} has no {IMAGE_NAME}",
            hint="build with `output: {installer: true}` in the definition",
        )
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="actvsm-inst-")))
        boot_part = BootPartition(image)
        entries = grub_config(boot_part, firmware, work)
        chosen = pick_mode(manifest, mode, out_dir, list(entries))
        if chosen not in entries:
            raise InputError(f"{image}: grub-{firmware}.cfg has no entry for mode {chosen}")
        try:
            plan = plan_from_image(boot_part, entries[chosen], out_dir / "platform.yaml", work)
        except BuildError as exc:
            return BootReport(chosen, "halt", str(exc))
        state = state_dir if state_dir is not None else work / "state"
        prepare_state(out_dir, state)
        disk = overlay_disk(image, state / "disks" / "installer.qcow2")
        select_mode(image, disk.path, chosen)
        spec = BootSpec(
            kernel=None, plan=plan, disks=[disk], memory_mb=memory_mb, uefi=firmware == "uefi"
        )
        result = boot(
            spec,
            marker=MARKER,
            timeout=timeout,
            state_dir=state / "tpm",
            on_line=on_line,
            console_log=state / "installer-console.log" if state_dir is not None else None,
        )
    return report(chosen, result)
