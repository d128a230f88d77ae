"""The key never crosses the TPM interface in clear (a bus sniffer learns nothing).

A tap between the client and swtpm (command and control ports) records every byte.
Sealing (parameter-encrypted Create) and unsealing (response-encrypted Unseal, in
Python and in the initramfs script) go through it; the recording must not hold the
key. A control run shows the tap does see a secret sent without encryption.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.seal import LocalTpm, VolumeSpec, make_volume, unseal_volume
from builder.seal.script import unseal_script
from builder.seal.tpm import open_tpm, read_pcrs
from builder.swtpm import Swtpm, free_port_pair


class Tap:
    """TCP relay for swtpm's two ports that keeps a copy of all traffic."""

    def __init__(self, tpm: Swtpm) -> None:
        self.port = free_port_pair()
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.listeners = []
        for offset, upstream in ((0, tpm.port), (1, tpm.ctrl_port)):
            srv = socket.create_server(("127.0.0.1", self.port + offset))
            self.listeners.append(srv)
            threading.Thread(target=self._accept, args=(srv, upstream), daemon=True).start()

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def _accept(self, srv: socket.socket, upstream: int) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", upstream))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self.lock:
                    self.seen += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        for srv in self.listeners:
            srv.close()


@pytest.fixture
def tap(swtpm: Swtpm) -> Iterator[Tap]:
    t = Tap(swtpm)
    yield t
    t.close()


def test_key_is_never_on_the_wire(tap: Tap, tmp_path: Path) -> None:
    with open_tpm(tap.tcti) as ctx:
        now = read_pcrs(ctx, "sha256:11,17,18,19")
    spec = VolumeSpec("wire", 32 << 20, ("normal",))
    art = make_volume(spec, {"normal": now}, LocalTpm(tap.tcti), tmp_path)
    key = unseal_volume(art.path, tap.tcti).secret
    script = tmp_path / "unseal.sh"
    script.write_text(unseal_script())
    script.chmod(0o755)
    env = {**os.environ, "TPM2TOOLS_TCTI": tap.tcti, "TMPDIR": str(tmp_path)}
    by_script = subprocess.run([script, art.path], env=env, capture_output=True, timeout=120)
    assert by_script.returncode == 0 and by_script.stdout == key
    assert len(tap.seen) > 1000
    assert key not in tap.seen


def test_tap_sees_an_unprotected_secret(tap: Tap, tmp_path: Path) -> None:
    """Control: a plain tpm2_create sends its sensitive data in clear."""
    env = {**os.environ, "TPM2TOOLS_TCTI": tap.tcti}
    secret = os.urandom(32)
    for cmd, data in (
        (["tpm2_createprimary", "-C", "o", "-c", str(tmp_path / "p.ctx")], None),
        (["tpm2_create", "-C", str(tmp_path / "p.ctx"), "-i", "-",
          "-u", str(tmp_path / "o.pub"), "-r", str(tmp_path / "o.priv")], secret),
    ):  # fmt: skip
        subprocess.run(cmd, input=data, env=env, check=True, capture_output=True, timeout=60)
    assert secret in tap.seen
