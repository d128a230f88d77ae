"""`actvsm boot`: boot a build output in QEMU with a swtpm TPM and the emulated late launch.

The rig performs the launch from the files it boots, not from the manifest: the GRUB
config on disk gives the mode's command lines, `launch/vl.pol` the policy, and the
kernel, initrd and tboot bytes are hashed as tboot would. A tampered file therefore
changes the PCRs the guest sees (or makes the model say tboot would halt), exactly as
on hardware. The output is never written: the TPM state starts as a copy of
`rig/tpm/` and every disk is a qcow2 overlay, both in a state directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import BuildError, InputError
from builder.pcr import Event
from builder.platform import load_platform
from builder.predict import INITRD_NAME, KERNEL_NAME, TBOOT_NAME, boot_modules
from builder.rig.launch import LaunchPlan
from builder.rig.qemu import BootResult, BootSpec, Disk, Outcome, boot, overlay_disk
from builder.tboot.launch import launch_plan, rig_launch
from builder.tboot.mlehash import load_mle
from builder.verify import grub_entries

MARKER = "ACTVSM-WORKLOAD-READY"
FAILED = "actvsm: FAILED:"
STAMP_START = "initramfs start"
STAMP_SWITCH = "switching root"
DEFAULT_TIMEOUT = 300.0
STATE_ORIGIN = "origin.json"


@dataclass(frozen=True)
class BootRequest:
    out: Path
    mode: str | None = None
    state: Path | None = None  # None: a fresh temporary state, removed afterwards
    firmware: str = "bios"
    timeout: float = DEFAULT_TIMEOUT
    memory_mb: int = 768
    # Extra extends the rig performs right after the launch: a test's way to extend the
    # phase PCR before the initramfs runs (a platform compromised before the kernel).
    pre_extends: Sequence[tuple[int, Event]] = ()


@dataclass
class BootReport:
    mode: str
    outcome: str  # "marker" | "failed" | "halt" | "exited" | "timeout"
    message: str
    seconds: float = 0.0
    seconds_to_marker: float | None = None
    initramfs_seconds: float | None = None  # initramfs start to switch_root (guest uptime)
    console: str = ""
    launches: int = 0
    proxy_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.outcome == "marker"

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "outcome": self.outcome,
            "ok": self.ok,
            "message": self.message,
            "seconds": round(self.seconds, 3),
            "seconds_to_marker": _round(self.seconds_to_marker),
            "initramfs_seconds": _round(self.initramfs_seconds),
            "launches": self.launches,
            "proxy_errors": self.proxy_errors,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def load_manifest(out: Path) -> dict[str, Any]:
    path = out / "manifest.json"
    if not path.is_file():
        raise InputError(
            f"{out} is not a build output (no manifest.json)",
            hint="give the directory `actvsm build` wrote, e.g. out/default",
        )
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the manifest: {exc}") from None
    return data


def pick_mode(
    manifest: dict[str, Any], mode: str | None, where: Path, grub_order: list[str]
) -> str:
    """`mode`, checked against the manifest; by default GRUB's default (first) entry."""
    modes = list(manifest.get("modes", {}))
    if not modes:
        raise InputError(f"{where}/manifest.json lists no modes")
    if mode is None:
        return next((m for m in grub_order if m in modes), modes[0])
    if mode not in modes:
        known = [m for m in grub_order if m in modes] or modes
        raise InputError(
            f"mode '{mode}' is not in {where}/manifest.json",
            hint=f"use one of: {', '.join(known)}",
        )
    return mode


def read_grub(out: Path, firmware: str) -> dict[str, dict[str, str]]:
    cfg = out / "boot" / "grub" / f"grub-{firmware}.cfg"
    try:
        return grub_entries(cfg.read_text())
    except OSError as exc:
        raise InputError(f"{cfg}: cannot read the GRUB config: {exc.strerror}") from None


def plan_from_files(out: Path, mode: str, firmware: str) -> tuple[str, LaunchPlan]:
    """(the kernel command line, the rig's launch) from the files on disk; BuildError
    says why tboot would halt."""
    entry = read_grub(out, firmware).get(mode)
    if entry is None or "kernel_cmdline" not in entry:
        raise BuildError(
            f"grub-{firmware}.cfg has no entry for mode {mode}; GRUB could not boot it"
        )
    files = {}
    for name in (KERNEL_NAME, INITRD_NAME, TBOOT_NAME):
        files[name] = _read(out / "boot" / name)
    policy = _read(out / "launch" / "vl.pol")
    platform = load_platform(out / "platform.yaml")
    try:
        plan = launch_plan(
            platform,
            mle=load_mle(files[TBOOT_NAME], TBOOT_NAME),
            tboot_name=TBOOT_NAME,
            tboot_cmdline=entry.get("tboot_cmdline", ""),
            modules=boot_modules(files[KERNEL_NAME], files[INITRD_NAME], entry["kernel_cmdline"]),
            policy=policy,
        )
        hash_data, extends = rig_launch(plan)
    except (BuildError, ValueError) as exc:
        raise BuildError(f"tboot would halt: {exc}") from None
    return entry["kernel_cmdline"], LaunchPlan(hash_data, tuple(extends))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(
            f"{path}: {exc.strerror}", hint="is this a complete build output?"
        ) from None


def disks(out: Path, manifest: dict[str, Any], state: Path) -> list[Disk]:
    """Overlays of the base, its verity tree and every volume, named as the initramfs
    looks for them (virtio serial `actvsm-base`, `actvsm-verity`, `actvsm-vol-NAME`)."""
    found: list[Disk] = []
    bases = sorted(p for p in out.glob("base.*") if p.suffix in (".squashfs", ".erofs"))
    if not bases:
        raise InputError(f"{out} has no base.squashfs or base.erofs")
    named = [(bases[0], "actvsm-base", True)]
    if (out / "base.verity").is_file():
        named.append((out / "base.verity", "actvsm-verity", True))
    for name in sorted(manifest.get("volumes", {})):
        named.append((out / "volumes" / f"{name}.luks", f"actvsm-vol-{name}", False))
    for path, serial, readonly in named:
        if not path.is_file():
            raise InputError(f"{path} is missing", hint="is this a complete build output?")
        disk = overlay_disk(path, state / "disks" / f"{serial}.qcow2")
        found.append(Disk(disk.path, disk.format, readonly, serial))
    return found


def prepare_state(out: Path, state: Path) -> None:
    """A state directory belongs to one output: the TPM starts as a copy of its rig TPM."""
    origin = state / STATE_ORIGIN
    me = {
        "output": str(out.resolve()),
        "manifest_sha256": hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest(),
    }
    if origin.is_file():
        was = json.loads(origin.read_text())
        if was != me:
            raise InputError(
                f"state directory {state} was made for another build "
                f"({was.get('output')}, manifest {str(was.get('manifest_sha256'))[:12]})",
                hint="use another --state directory (or remove this one)",
            )
        return
    state.mkdir(parents=True, exist_ok=True)
    if (out / "rig" / "tpm").is_dir():
        shutil.copytree(out / "rig" / "tpm", state / "tpm")
    origin.write_text(json.dumps(me) + "\n")


def boot_output(req: BootRequest, on_line: Callable[[str], None] | None = None) -> BootReport:
    out = req.out
    manifest = load_manifest(out)
    if req.firmware not in ("bios", "uefi"):
        raise InputError(f"--firmware {req.firmware}: use bios or uefi")
    mode = pick_mode(manifest, req.mode, out, list(read_grub(out, req.firmware)))
    try:
        append, plan = plan_from_files(out, mode, req.firmware)
    except BuildError as exc:
        return BootReport(mode, "halt", str(exc))
    if req.pre_extends:
        plan = LaunchPlan(plan.hash_data, (*plan.extends, *req.pre_extends))
    with ExitStack() as stack:
        if req.state is None:
            state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="actvsm-boot-")))
        else:
            state = req.state
        prepare_state(out, state)
        spec = BootSpec(
            kernel=out / "boot" / KERNEL_NAME,
            initrd=out / "boot" / INITRD_NAME,
            append=append,
            plan=plan,
            disks=disks(out, manifest, state),
            memory_mb=req.memory_mb,
            uefi=req.firmware == "uefi",
        )
        result = boot(
            spec,
            marker=MARKER,
            timeout=req.timeout,
            state_dir=state / "tpm",
            on_line=on_line,
            console_log=state / "console.log" if req.state is not None else None,
        )
    return report(mode, result)


def report(mode: str, result: BootResult) -> BootReport:
    failed = [line for line in result.lines if FAILED in line]
    if result.outcome is Outcome.MARKER:
        outcome, message = "marker", "the workload is up"
    elif failed:
        outcome, message = "failed", failed[0][failed[0].index(FAILED) :]
    elif result.outcome is Outcome.TIMEOUT:
        outcome, message = "timeout", "no workload marker before the timeout"
    else:
        outcome, message = "exited", f"QEMU ended without the marker ({result.qemu_returncode})"
    return BootReport(
        mode,
        outcome,
        message,
        seconds=result.seconds,
        seconds_to_marker=result.seconds_to_marker,
        initramfs_seconds=initramfs_seconds(result.console),
        console=result.console,
        launches=result.proxy.launches,
        proxy_errors=list(result.proxy.errors),
    )


def initramfs_seconds(console: str) -> float | None:
    """Guest uptime from the init's first stamp to switch_root (`actvsm: [UPTIME] ...`)."""
    stamps: dict[str, float] = {}
    for line in console.splitlines():
        if "actvsm: [" not in line:
            continue
        head, _, rest = line.partition("actvsm: [")
        value, _, what = rest.partition("] ")
        try:
            stamps.setdefault(what.strip(), float(value))
        except ValueError:
            continue
    if STAMP_START in stamps and STAMP_SWITCH in stamps:
        return stamps[STAMP_SWITCH] - stamps[STAMP_START]
    return None
