"""A proxy that owns swtpm's control channel so the rig can perform a late launch.

QEMU's `-tpmdev emulator` talks to swtpm over a control socket and hands swtpm the TPM
data channel with CMD_SET_DATAFD; the host then has no way left to send HASH_START or
SET_LOCALITY. The proxy sits on that control socket instead:

- it forwards each control request from QEMU to swtpm whole and waits for the whole
  reply before reading the next, so its own requests never interleave with QEMU's;
- on SET_DATAFD it keeps QEMU's data fd, gives swtpm one end of its own socketpair and
  relays TPM commands between the two, split by the size in each TPM header;
- when swtpm answers a TPM2_Startup with success after a CMD_INIT (power-on or reset),
  it performs the `LaunchPlan` before passing that answer on: SET_LOCALITY 4,
  HASH_START/DATA/END, then each PCR_Extend at its locality, then QEMU's locality again.

One thread serves everything with a selector, so a control request from QEMU waits
while a TPM command is in flight, as it would at swtpm itself. `stop()` wakes it up
through a pipe; no polling.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from builder.rig import swtpm_ctrl, tpmwire
from builder.rig.launch import LaunchPlan
from builder.rig.swtpm_ctrl import Cmd

log = logging.getLogger(__name__)

REPLY_TIMEOUT = 60.0  # swtpm answers in ms; a TPM key generation may take seconds
SizeOf = Callable[[bytes], int | None]


class ProxyError(Exception):
    """The proxy lost a peer or got a message it cannot frame."""


@dataclass
class ProxyStats:
    """What the proxy did, for the rig's result and for tests."""

    launches: int = 0  # late launches performed (one per power-on or reset)
    launch_seconds: float = 0.0  # time spent performing them (the guest waits meanwhile)
    tpm_commands: int = 0
    control_requests: int = 0
    errors: list[str] = field(default_factory=list)


class _Peer:
    """A stream socket with a receive buffer, read one framed message at a time."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.buf = b""
        self.fds: list[int] = []

    def fill(self) -> bool:
        """Read what is available (and any passed fds); False at end of stream."""
        data, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 4)
        self.fds.extend(fds)
        self.buf += data
        return bool(data)

    def take(self, size_of: SizeOf, *, whole: bool = False) -> bytes | None:
        """The first complete message in the buffer, if there is one.

        `whole`: `size_of` gives a least size and the message is all that has arrived
        (control messages: one write each, one in flight).
        """
        size = size_of(self.buf)
        if size is None or len(self.buf) < size:
            return None
        if whole:
            size = len(self.buf)
        message, self.buf = self.buf[:size], self.buf[size:]
        return message

    def read(
        self, size_of: SizeOf, *, whole: bool = False, timeout: float = REPLY_TIMEOUT
    ) -> bytes:
        """Block (bounded) until one whole message has arrived."""
        deadline = time.monotonic() + timeout
        while (message := self.take(size_of, whole=whole)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProxyError(f"{self.name}: no complete message within {timeout:.0f} s")
            self.sock.settimeout(remaining)
            try:
                if not self.fill():
                    raise ProxyError(f"{self.name}: closed the connection")
            except TimeoutError:
                continue
            finally:
                self.sock.settimeout(None)
        return message

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []
        self.sock.close()


class TpmProxy:
    """`with TpmProxy(listen, swtpm_sock, plan):` serves QEMU's control socket `listen`.

    `swtpm_sock` is a connected control socket to swtpm (swtpm `--ctrl
    type=unixio,clientfd=N` with the other end of a socketpair: no path, no race, no
    other client). The proxy closes it on `stop()`. `plan=None` only relays.
    """

    def __init__(self, listen: Path, swtpm_sock: socket.socket, plan: LaunchPlan | None) -> None:
        self.listen_path = listen
        self.plan = plan
        self.stats = ProxyStats()
        self._armed = True
        self._qemu_locality = 0
        self._server: socket.socket | None = None
        self._qemu_ctrl: _Peer | None = None
        self._swtpm_ctrl = _Peer(swtpm_sock, "swtpm control")
        self._qemu_data: _Peer | None = None
        self._swtpm_data: _Peer | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._sel = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._serve, name="tpmproxy", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> TpmProxy:
        self.listen_path.unlink(missing_ok=True)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(os.fspath(self.listen_path))
        self._server.listen(1)
        self._sel.register(self._server, selectors.EVENT_READ, self._accept)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._wake_w < 0:
            return  # stopped already
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join(timeout=10)
        self._close_connection()
        self._swtpm_ctrl.close()
        if self._server is not None:
            self._server.close()
            self._server = None
        self.listen_path.unlink(missing_ok=True)
        self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> TpmProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the loop ----------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            for key, _mask in self._sel.select():
                if key.data is None:
                    return
                if self._sel.get_map().get(key.fd) is not key:
                    continue  # closed by an earlier callback of this round
                try:
                    key.data()
                except Exception as exc:  # noqa: BLE001 - a dead thread would hang QEMU
                    self._fail(f"{type(exc).__name__}: {exc}; closing the connection")
                    self._close_connection()

    def _fail(self, message: str) -> None:
        log.warning("tpmproxy: %s", message)
        self.stats.errors.append(message)

    def _accept(self) -> None:
        assert self._server is not None
        conn, _ = self._server.accept()
        if self._qemu_ctrl is not None:
            conn.close()  # one client at a time, as swtpm itself
            return
        self._qemu_ctrl = _Peer(conn, "QEMU control")
        self._sel.register(conn, selectors.EVENT_READ, self._on_control)

    def _close_connection(self) -> None:
        """Drop QEMU's connection and the data channel; swtpm's control socket stays."""
        for peer in (self._qemu_ctrl, self._qemu_data, self._swtpm_data):
            if peer is None:
                continue
            try:
                self._sel.unregister(peer.sock)
            except (KeyError, ValueError):
                pass
            peer.close()
        self._qemu_ctrl = self._qemu_data = self._swtpm_data = None

    # -- control channel ---------------------------------------------------------------

    def _on_control(self) -> None:
        qemu = self._qemu_ctrl
        assert qemu is not None
        if not qemu.fill():
            self._close_connection()  # QEMU went away (VM powered off or QEMU killed)
            return
        while (request := qemu.take(swtpm_ctrl.request_min_size, whole=True)) is not None:
            self.stats.control_requests += 1
            code = swtpm_ctrl.command_code(request)
            log.debug("control request %s", request.hex())
            if code == Cmd.SET_DATAFD:
                reply = self._set_datafd(request)
            else:
                reply = self._control(request)
            if code == Cmd.INIT and swtpm_ctrl.result_of(reply) == 0:
                self._armed = True
            locality = swtpm_ctrl.locality_of(request)
            if locality is not None and swtpm_ctrl.result_of(reply) == 0:
                self._qemu_locality = locality
            qemu.sock.sendall(reply)

    def _control(self, request: bytes, fds: list[int] | None = None) -> bytes:
        """Send one request to swtpm and return its whole reply."""
        swtpm = self._swtpm_ctrl
        if fds:
            socket.send_fds(swtpm.sock, [request], fds)
        else:
            swtpm.sock.sendall(request)
        code = swtpm_ctrl.command_code(request)
        least = swtpm_ctrl.reply_min_size(code)
        reply = swtpm.read(lambda head: least, whole=True)
        log.debug("control reply %s", reply.hex())
        return reply

    def _set_datafd(self, request: bytes) -> bytes:
        qemu = self._qemu_ctrl
        assert qemu is not None
        if not qemu.fds:
            raise ProxyError("QEMU sent SET_DATAFD without a file descriptor")
        if self._qemu_data is not None:
            self._sel.unregister(self._qemu_data.sock)
            self._qemu_data.close()
            assert self._swtpm_data is not None
            self._swtpm_data.close()
        qemu_fd = qemu.fds.pop(0)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            reply = self._control(request, [theirs.fileno()])
        finally:
            theirs.close()  # swtpm holds its own copy now
        self._qemu_data = _Peer(socket.socket(fileno=qemu_fd), "QEMU data")
        self._swtpm_data = _Peer(ours, "swtpm data")
        self._sel.register(self._qemu_data.sock, selectors.EVENT_READ, self._on_data)
        return reply

    # -- data channel ------------------------------------------------------------------

    def _on_data(self) -> None:
        qemu, swtpm = self._qemu_data, self._swtpm_data
        assert qemu is not None and swtpm is not None
        if not qemu.fill():
            self._sel.unregister(qemu.sock)
            qemu.close()
            swtpm.close()
            self._qemu_data = self._swtpm_data = None
            return
        while (command := qemu.take(tpmwire.message_size)) is not None:
            response = self._tpm(command)
            if (
                tpmwire.command_code(command) == tpmwire.CC_STARTUP
                and tpmwire.response_code(response) == 0
                and self._armed
                and self.plan is not None
            ):
                self._armed = False
                self._launch(self.plan)
            qemu.sock.sendall(response)

    def _tpm(self, command: bytes) -> bytes:
        swtpm = self._swtpm_data
        assert swtpm is not None
        self.stats.tpm_commands += 1
        log.debug("TPM command %s", command[:16].hex())
        swtpm.sock.sendall(command)
        response = swtpm.read(tpmwire.message_size)
        log.debug("TPM response %s", response[:16].hex())
        return response

    # -- the late launch ---------------------------------------------------------------

    def _launch(self, plan: LaunchPlan) -> None:
        """The emulated SINIT + tboot: reset PCR 17-22 and extend the plan's events."""
        started = time.monotonic()
        try:
            self._expect_ok(swtpm_ctrl.set_locality(4), "SET_LOCALITY 4")
            self._expect_ok(swtpm_ctrl.request(Cmd.HASH_START), "HASH_START")
            for message in swtpm_ctrl.hash_data_messages(plan.hash_data):
                self._expect_ok(message, "HASH_DATA")
            self._expect_ok(swtpm_ctrl.request(Cmd.HASH_END), "HASH_END")
            for locality, event in plan.extends:
                self._expect_ok(swtpm_ctrl.set_locality(locality), f"SET_LOCALITY {locality}")
                rc = tpmwire.response_code(self._tpm(tpmwire.pcr_extend(event.pcr, event.digests)))
                if rc != 0:
                    raise ProxyError(
                        f"PCR_Extend of PCR {event.pcr} ({event.kind}) at locality {locality} "
                        f"failed with TPM rc {rc:#x}"
                    )
            self.stats.launches += 1
        except ProxyError as exc:
            self._fail(f"late launch: {exc}")
        finally:
            self._expect_ok(
                swtpm_ctrl.set_locality(self._qemu_locality), "restoring QEMU's locality"
            )
            self.stats.launch_seconds += time.monotonic() - started

    def _expect_ok(self, request: bytes, what: str) -> None:
        result = swtpm_ctrl.result_of(self._control(request))
        if result != 0:
            raise ProxyError(f"{what} failed with result {result:#x}")
