"""A throw-away swtpm TPM 2.0 server on loopback, for tests, benchmarks and the boot rig."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from builder.errors import BuildError
from builder.run import require_tool


def free_port_pair() -> int:
    """A port P with P and P+1 both free on 127.0.0.1 (swtpm's server and control)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
            return int(port)
        except OSError:
            continue
    raise BuildError("could not find two adjacent free TCP ports on 127.0.0.1")


class Swtpm:
    """`with Swtpm() as tpm:` starts swtpm (all four banks, started up) and stops it.

    `tpm.tcti` is the TCTI string for tpm2-tools and tpm2-pytss.
    """

    def __init__(self, state_dir: Path | None = None) -> None:
        self._own_dir: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._own_dir = tempfile.TemporaryDirectory(prefix="actvsm-swtpm-")
            state_dir = Path(self._own_dir.name)
        self.state_dir = state_dir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ctrl_port(self) -> int:
        return self.port + 1

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"TPM2TOOLS_TCTI": self.tcti}

    def start(self) -> Swtpm:
        require_tool("swtpm", "emulate a TPM 2.0")
        for _attempt in range(5):
            self.port = free_port_pair()
            self.proc = subprocess.Popen(
                [
                    "swtpm",
                    "socket",
                    "--tpm2",
                    "--server",
                    f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                    "--ctrl",
                    f"type=tcp,port={self.ctrl_port},bindaddr=127.0.0.1",
                    "--tpmstate",
                    f"dir={self.state_dir}",
                    "--flags",
                    "not-need-init,startup-clear",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if self._wait_ready():
                return self
            self.stop()
        raise BuildError("swtpm did not start (tried 5 port pairs)")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self) -> Swtpm:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._own_dir is not None:
            self._own_dir.cleanup()


def tools_env(tpm: Swtpm) -> dict[str, str]:
    """Environment for tpm2-tools against this swtpm."""
    env = dict(os.environ)
    env.update(tpm.env)
    return env
