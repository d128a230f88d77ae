"""Boot a guest in QEMU with a swtpm TPM and the emulated late launch; watch its console.

`boot()` starts swtpm (control channel on a socketpair, state in a directory), the
`TpmProxy` between QEMU and swtpm, and QEMU (`-accel tcg`, direct kernel boot or a disk
booted through SeaBIOS/OVMF, serial console on a pipe), streams the console line by
line, and stops at the marker line, on QEMU's exit or at the host-side timeout. QEMU is
killed after a short grace once the marker is seen (a guest that fails to power off
must not hang the caller), and swtpm and the proxy are always cleaned up.
"""

from __future__ import annotations

import os
import selectors
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from builder.rig.launch import LaunchPlan
from builder.rig.tpmproxy import ProxyStats, TpmProxy
from builder.run import debug_enabled, require_tool, run

DEFAULT_TIMEOUT = 150.0
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


class Outcome(StrEnum):
    MARKER = "marker"  # the marker line appeared
    EXITED = "exited"  # QEMU ended (guest powered off, or QEMU failed) without the marker
    TIMEOUT = "timeout"  # neither within the host-side timeout; QEMU was killed


@dataclass(frozen=True)
class Disk:
    path: Path
    format: str = "raw"
    readonly: bool = False
    serial: str | None = None  # virtio serial: how the initramfs finds the disk


@dataclass(frozen=True)
class BootSpec:
    """What to boot, and the machine around it: a kernel, its initramfs and command line
    (direct kernel boot), or with `kernel` None the first disk through the firmware
    (SeaBIOS, or OVMF with `uefi`), as a machine boots its disk."""

    kernel: Path | None
    initrd: Path | None = None
    append: str = ""
    plan: LaunchPlan | None = None  # None: a plain TPM, no late launch
    disks: Sequence[Disk] = ()
    memory_mb: int = 512
    uefi: bool = False  # OVMF instead of SeaBIOS
    allow_reboot: bool = False  # False: `-no-reboot`, a guest reboot ends QEMU
    tpm: bool = True
    extra_args: Sequence[str] = ()


@dataclass
class BootResult:
    outcome: Outcome
    console: str
    seconds: float  # QEMU start to the end of the boot
    seconds_to_marker: float | None
    qemu_returncode: int | None  # None if QEMU had to be killed
    proxy: ProxyStats = field(default_factory=ProxyStats)

    @property
    def lines(self) -> list[str]:
        return self.console.splitlines()


def boot(
    spec: BootSpec,
    *,
    marker: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    grace: float = 10.0,
    state_dir: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    console_log: Path | None = None,
) -> BootResult:
    """Boot `spec` until `marker` appears in a console line, QEMU exits or `timeout` passes.

    `state_dir` keeps swtpm's state between boots (default: a fresh TPM each boot).
    """
    qemu_bin = require_tool("qemu-system-x86_64", "boot the guest")
    require_tool("swtpm", "emulate the guest's TPM")
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="actvsm-rig-")))
        proxy: TpmProxy | None = None
        if spec.tpm:
            tpm_dir = state_dir if state_dir is not None else work / "tpm"
            ctrl = stack.enter_context(SwtpmProcess(tpm_dir, work / "swtpm.log"))
            proxy = stack.enter_context(TpmProxy(work / "tpm-ctrl.sock", ctrl, spec.plan))
        argv = qemu_argv(qemu_bin, spec, work, tpm_socket=proxy.listen_path if proxy else None)
        log = stack.enter_context(open(console_log, "w")) if console_log else None  # noqa: SIM115

        def line_seen(line: str) -> None:
            if log is not None:
                log.write(line + "\n")
                log.flush()
            if on_line is not None:
                on_line(line)

        result = _run_qemu(argv, marker, timeout, grace, line_seen)
        if proxy is not None:
            result.proxy = proxy.stats
        return result


def overlay_disk(base: Path, overlay: Path, base_format: str = "raw") -> Disk:
    """A qcow2 copy-on-write overlay of `base`: the guest writes land in `overlay`, so a
    boot never modifies the build output. An existing overlay is kept (shared state)."""
    if not overlay.exists():
        qemu_img = require_tool("qemu-img", "create copy-on-write disk overlays")
        overlay.parent.mkdir(parents=True, exist_ok=True)
        backing = os.path.abspath(base)
        run(
            [qemu_img, "create", "-q", "-f", "qcow2", "-b", backing, "-F", base_format, overlay],
            timeout=60,
        )
    return Disk(overlay, "qcow2")


def qemu_argv(qemu: str, spec: BootSpec, work: Path, *, tpm_socket: Path | None) -> list[str]:
    argv = [qemu, "-accel", "tcg", "-m", str(spec.memory_mb), "-smp", "1", "-nodefaults"]
    argv += ["-display", "none", "-serial", "stdio", "-monitor", "none"]
    if spec.kernel is not None:
        argv += ["-kernel", os.fspath(spec.kernel)]
        if spec.initrd is not None:
            argv += ["-initrd", os.fspath(spec.initrd)]
        argv += ["-append", spec.append]
    elif spec.initrd is not None or spec.append or not spec.disks:
        raise ValueError("a firmware boot (no kernel) takes no initrd or append, and a disk")
    if not spec.allow_reboot:
        argv.append("-no-reboot")
    if spec.uefi:
        vars_copy = work / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"]
        argv += ["-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
    for i, disk in enumerate(spec.disks):
        opts = f"file={disk.path},format={disk.format}"
        opts += ",readonly=on" if disk.readonly else ""
        # Every disk is a virtio-blk device; the firmware boots the first (bootindex 0).
        device = f"virtio-blk-pci,drive=disk{i}"
        device += f",serial={disk.serial}" if disk.serial is not None else ""
        device += ",bootindex=0" if spec.kernel is None and i == 0 else ""
        argv += ["-drive", opts + f",if=none,id=disk{i}", "-device", device]
    if tpm_socket is not None:
        argv += ["-chardev", f"socket,id=chrtpm,path={tpm_socket}"]
        argv += ["-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]
    return argv + list(spec.extra_args)


class SwtpmProcess:
    """swtpm whose control channel is one end of a socketpair (`clientfd`); the context
    value is the other end. No data channel: QEMU (or a test) passes it with SET_DATAFD."""

    def __init__(self, state_dir: Path, log: Path) -> None:
        self.state_dir = state_dir
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> socket.socket:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with theirs:
            argv = ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state_dir}"]
            argv += ["--ctrl", f"type=unixio,clientfd={theirs.fileno()}"]
            argv += ["--log", f"file={self.log},level=1"]
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()],
            )
        return ours

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:  # QEMU's CMD_SHUTDOWN ends it; else ask it to stop
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _run_qemu(
    argv: list[str],
    marker: str | None,
    timeout: float,
    grace: float,
    on_line: Callable[[str], None],
) -> BootResult:
    if debug_enabled():
        print("+ " + shlex.join(argv), file=sys.stderr, flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    reader = _LineReader(on_line)
    marker_at: float | None = None
    deadline = start + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if not sel.select(timeout=deadline - now):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break  # QEMU closed its output: it has exited
            for line in reader.feed(chunk):
                if marker_at is None and marker is not None and marker in line:
                    marker_at = time.monotonic()
                    deadline = min(deadline, marker_at + grace)
    reader.flush()
    returncode = _reap(proc)
    proc.stdout.close()
    if marker_at is not None:
        outcome = Outcome.MARKER
    elif returncode is not None:
        outcome = Outcome.EXITED
    else:
        outcome = Outcome.TIMEOUT
    return BootResult(
        outcome=outcome,
        console=reader.text(),
        seconds=time.monotonic() - start,
        seconds_to_marker=None if marker_at is None else marker_at - start,
        qemu_returncode=returncode,
    )


def _reap(proc: subprocess.Popen[bytes]) -> int | None:
    """QEMU's exit status, or None if it had to be killed."""
    try:
        return proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


class _LineReader:
    """Splits the console byte stream into lines (CR/LF tolerant) as they arrive."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self.on_line = on_line
        self.pending = b""
        self.lines: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self.pending += chunk
        *complete, self.pending = self.pending.split(b"\n")
        new = [raw.decode(errors="replace").rstrip("\r") for raw in complete]
        for line in new:
            self.lines.append(line)
            self.on_line(line)
        return new

    def flush(self) -> None:
        if self.pending:
            self.feed(b"\n")

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)
