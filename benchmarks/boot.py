"""QEMU start to the probe's marker: no TPM, a plain swtpm TPM, and the emulated launch.

Prints seconds to the marker for each (best of N, one guest at a time, `-smp 1`) and
the ratios against the no-TPM boot measured in the same run, and the time the proxy
spends injecting the launch (the guest waits for its Startup answer meanwhile). Goal:
the injected launch costs nothing noticeable (ratio launch/plain TPM about 1.0; TCG
boots on a shared machine vary by a few seconds, the injection time does not).

    .venv/bin/python -m benchmarks.boot [--repeat N]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from builder.banks import Bank
from builder.pcr import Event
from builder.rig.launch import LaunchPlan
from builder.rig.probe import DONE, ProbeOptions, build_probe
from builder.rig.qemu import BootSpec, Outcome, boot

APPEND = "console=ttyS0 panic=-1 quiet"


def host_kernel() -> tuple[Path, str]:
    for kernel in sorted(Path("/boot").glob("vmlinuz-*"), reverse=True):
        kver = kernel.name.removeprefix("vmlinuz-")
        if Path("/lib/modules", kver, "modules.dep").exists():
            return kernel, kver
    raise SystemExit("no /boot/vmlinuz-* with modules: apt-get install linux-image-amd64")


def seconds_to_marker(spec: BootSpec, launch_seconds: list[float]) -> float:
    result = boot(spec, marker=DONE, timeout=180)
    if result.outcome is not Outcome.MARKER or result.seconds_to_marker is None:
        raise SystemExit(f"boot failed ({result.outcome}):\n{result.console[-2000:]}")
    if result.proxy.launches:
        launch_seconds.append(result.proxy.launch_seconds / result.proxy.launches)
    return result.seconds_to_marker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args([] if __name__ != "__main__" else None)
    kernel, kver = host_kernel()
    banks = (Bank.SHA1, Bank.SHA256)
    plan = LaunchPlan(
        b"SINIT and MLE" * 1000,
        [(2, Event.measuring(18, b"kernel", "kernel", "vmlinuz", banks=banks))] * 8,
    )
    with tempfile.TemporaryDirectory(prefix="actvsm-bench-") as tmp:
        initrd = Path(tmp) / "probe.gz"
        build_probe(Path("/"), ProbeOptions(kver, send_eventlog=False), initrd)
        specs = {
            "no TPM": BootSpec(kernel, initrd, APPEND, tpm=False),
            "plain TPM": BootSpec(kernel, initrd, APPEND),
            "late launch": BootSpec(kernel, initrd, APPEND, plan),
        }
        best = {name: float("inf") for name in specs}
        launch_seconds: list[float] = []
        for _ in range(args.repeat):  # interleaved, so a busy moment hits every kind
            for name, spec in specs.items():
                best[name] = min(best[name], seconds_to_marker(spec, launch_seconds))
    base = best["no TPM"]
    for name, seconds in best.items():
        print(f"{name:12s} {seconds:6.2f} s to marker   ratio {seconds / base:.2f}")
    print(f"late launch / plain TPM: {best['late launch'] / best['plain TPM']:.2f} (goal ~1.0)")
    print(f"the injection itself: {1000 * min(launch_seconds):.1f} ms (13 KB hashed, 8 extends)")


if __name__ == "__main__":
    main()
