"""Hashing one 1 GiB file in all four banks against the coreutils tools.

Prints two ratios measured in the same run (best of N each, page cache warm):
  all banks:   file_digests(all four) / (sha1sum + sha256sum + sha384sum + sha512sum)
  sha256 only: file_digests(sha256) / sha256sum
Goals: at most 0.55 and 1.05. Run: .venv/bin/python -m benchmarks.hash_banks [--size-mib N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from builder.banks import ALL_BANKS, Bank
from builder.digest import file_digests

TOOLS = {
    Bank.SHA1: "sha1sum",
    Bank.SHA256: "sha256sum",
    Bank.SHA384: "sha384sum",
    Bank.SHA512: "sha512sum",
}


def best_of(n: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def tool_digest(tool: str, path: Path) -> bytes:
    out = subprocess.run([tool, str(path)], capture_output=True, check=True, timeout=600).stdout
    return bytes.fromhex(out.split()[0].decode())


def make_file(path: Path, size: int) -> None:
    block = os.urandom(16 * 1024 * 1024)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="actvsm-bench-", dir="/var/tmp") as tmp:
        path = Path(tmp) / "blob"
        make_file(path, args.size_mib * 1024 * 1024)
        size, ours = file_digests(path, ALL_BANKS)  # warms the page cache, checks results
        for bank, tool in TOOLS.items():
            if tool_digest(tool, path) != ours[bank]:
                raise SystemExit(f"{tool} disagrees with file_digests for {bank}")

        def tools_all() -> None:
            for tool in TOOLS.values():
                tool_digest(tool, path)

        t_tools = best_of(args.repeat, tools_all)
        t_ours = best_of(args.repeat, lambda: file_digests(path, ALL_BANKS))
        t_sha256sum = best_of(args.repeat, lambda: tool_digest("sha256sum", path))
        t_ours256 = best_of(args.repeat, lambda: file_digests(path, [Bank.SHA256]))
    mib = size / 2**20
    print(f"file: {mib:.0f} MiB, best of {args.repeat}, {os.cpu_count()} CPUs")
    print(f"  sha1sum+sha256sum+sha384sum+sha512sum: {t_tools:7.3f} s")
    print(f"  file_digests(all four banks):          {t_ours:7.3f} s")
    print(f"  ratio all banks:   {t_ours / t_tools:.3f}  (goal <= 0.55)")
    print(f"  sha256sum:                             {t_sha256sum:7.3f} s")
    print(f"  file_digests(sha256):                  {t_ours256:7.3f} s")
    print(f"  ratio sha256 only: {t_ours256 / t_sha256sum:.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()
