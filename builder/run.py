"""The one place that runs external commands.

Argument lists only, stdin from /dev/null unless data is given, a timeout on every
call, and failures turned into a `BuildError` that names the command and shows the
tail of its stderr. `--debug` (ACTVSM_DEBUG=1) logs each command as `+ cmd`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from builder.errors import BuildError

Arg = str | os.PathLike[str]

DEFAULT_TIMEOUT = 600.0

# Which Debian package brings each tool, for "not found" hints.
PACKAGE_OF = {
    "mkosi": "mkosi",
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "mkfs.erofs": "erofs-utils",
    "veritysetup": "cryptsetup-bin",
    "cryptsetup": "cryptsetup-bin",
    "swtpm": "swtpm",
    "swtpm_ioctl": "swtpm-tools",
    "tb_polgen": "tboot",
    "lcp2_mlehash": "tboot",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "grub-script-check": "grub-common",
    "tpm2_createpolicy": "tpm2-tools",
    "tpm2_eventlog": "tpm2-tools",
    "mke2fs": "e2fsprogs",
    "cpio": "cpio",
    "zstd": "zstd",
}


def debug_enabled() -> bool:
    return os.environ.get("ACTVSM_DEBUG", "") not in ("", "0")


def require_tool(name: str, purpose: str) -> str:
    """Return the tool's path or fail before any work starts."""
    path = shutil.which(name)
    if path is None:
        pkg = PACKAGE_OF.get(name)
        hint = f"install it: apt-get install {pkg}" if pkg else "install it and retry"
        raise BuildError(f"could not find '{name}', which is required to {purpose}", hint=hint)
    return path


def run(
    cmd: Sequence[Arg],
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    input: bytes | None = None,
    env: Mapping[str, str | None] | None = None,
    cwd: Arg | None = None,
    check: bool = True,
    capture: bool = True,
    stdout_path: Path | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.CompletedProcess[bytes]:
    """Run `cmd`; on failure raise a BuildError with the stderr tail.

    `env` is added to a copy of the current environment (None removes a variable).
    With `capture=False` the command's output goes to our stderr (for long steps whose
    progress the user sees).
    `pass_fds` keeps those descriptors open in the child (secrets handed over on pipes
    as /dev/fd/N, never in files).
    """
    argv = [os.fspath(a) for a in cmd]
    if debug_enabled():
        print("+ " + shlex.join(argv), file=sys.stderr)
    full_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    out_handle = None
    try:
        if stdout_path is not None:
            out_handle = open(stdout_path, "wb")  # noqa: SIM115 - closed in finally
            stdout: Any = out_handle
        else:
            stdout = subprocess.PIPE if capture else sys.stderr
        proc = subprocess.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE if capture else None,
            env=full_env,
            cwd=cwd,
            timeout=timeout,
            check=False,
            pass_fds=tuple(pass_fds),
        )
    except FileNotFoundError as exc:
        raise BuildError(
            f"could not run '{argv[0]}': not found",
            hint=f"install {PACKAGE_OF.get(Path(argv[0]).name, argv[0])}",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise BuildError(
            f"'{shlex.join(argv[:3])} ...' did not finish within {timeout:.0f} s"
        ) from exc
    finally:
        if out_handle is not None:
            out_handle.close()
    if check and proc.returncode != 0:
        raise command_failed(argv, proc.returncode, proc.stderr or b"")
    return proc


def command_failed(argv: Sequence[str], returncode: int, stderr: bytes) -> BuildError:
    tail = stderr.decode(errors="replace").strip().splitlines()[-8:]
    what = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
    msg = f"'{shlex.join(list(argv)[:4])}{' ...' if len(argv) > 4 else ''}' failed ({what})"
    if tail:
        msg += ":\n    " + "\n    ".join(tail)
    return BuildError(msg)
