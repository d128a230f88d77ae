"""The TPM proxy against a real swtpm, driven the way QEMU drives it (no QEMU here).

The test plays QEMU's part of the protocol: INIT, SET_DATAFD with its own socketpair,
SET_LOCALITY, then TPM commands on the data fd. Expected PCR values are computed with
hashlib in the test and by `builder.pcr.replay`; swtpm is the independent judge.
"""

from __future__ import annotations

import hashlib
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from tpm2_pytss.types import TPML_DIGEST, TPML_PCR_SELECTION

from builder.banks import Bank
from builder.pcr import Event, replay
from builder.rig import swtpm_ctrl, tpmwire
from builder.rig.launch import LaunchPlan
from builder.rig.qemu import SwtpmProcess
from builder.rig.swtpm_ctrl import Cmd
from builder.rig.tpmproxy import TpmProxy

STARTUP_CLEAR = bytes.fromhex("80010000000c000001440000")
TPM_RC_LOCALITY = 0x907


class FakeQemu:
    """QEMU's side of the emulator protocol, enough to boot a TPM and read PCRs."""

    def __init__(self, path: Path) -> None:
        self.ctrl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctrl.settimeout(30)
        self.ctrl.connect(str(path))
        self.data, theirs = socket.socketpair()
        self.data.settimeout(30)
        assert self.control(swtpm_ctrl.request(Cmd.INIT, bytes(4))) == bytes(4)
        socket.send_fds(self.ctrl, [swtpm_ctrl.request(Cmd.SET_DATAFD)], [theirs.fileno()])
        assert self.ctrl.recv(64) == bytes(4)
        theirs.close()

    def control(self, request: bytes) -> bytes:
        self.ctrl.sendall(request)
        return self.ctrl.recv(64)

    def tpm(self, command: bytes) -> bytes:
        self.data.sendall(command)
        response = b""
        while (size := tpmwire.message_size(response)) is None or len(response) < size:
            response += self.data.recv(4096)
        return response

    def reset(self) -> None:
        """A VM reset: INIT, then the firmware's TPM2_Startup."""
        assert self.control(swtpm_ctrl.request(Cmd.INIT, bytes(4))) == bytes(4)
        assert tpmwire.response_code(self.tpm(STARTUP_CLEAR)) == 0

    def pcrs(self, bank: Bank, pcrs: list[int]) -> dict[int, bytes]:
        selection = TPML_PCR_SELECTION.parse(f"{bank.value}:{','.join(map(str, pcrs))}")
        body = bytes(selection.marshal())
        response = self.tpm(struct.pack(">HII", 0x8001, 10 + len(body), 0x17E) + body)
        assert tpmwire.response_code(response) == 0
        _sel, used = TPML_PCR_SELECTION.unmarshal(response[14:])
        digests, _ = TPML_DIGEST.unmarshal(response[14 + used :])
        return {pcr: bytes(d) for pcr, d in zip(sorted(pcrs), digests, strict=True)}

    def close(self) -> None:
        self.ctrl.close()
        self.data.close()


def sample_plan(tag: bytes = b"kernel") -> LaunchPlan:
    both = (Bank.SHA1, Bank.SHA256)
    return LaunchPlan(
        hash_data=b"SINIT and MLE " * 700,  # 9800 bytes: three HASH_DATA messages
        extends=[
            (2, Event.measuring(18, tag, "kernel", "vmlinuz", banks=both)),
            (3, Event.measuring(17, b"policy", "vlp", "launch policy", banks=both)),
            (2, Event.measuring(19, b"initrd", "initrd", "initramfs", banks=both)),
            (2, Event.measuring(18, b"cmdline", "cmdline", "command line", banks=both)),
        ],
    )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[TpmProxy, FakeQemu]]:
    with (
        SwtpmProcess(tmp_path / "state", tmp_path / "swtpm.log") as ctrl,
        TpmProxy(tmp_path / "ctrl.sock", ctrl, sample_plan()) as proxy,
    ):
        qemu = FakeQemu(proxy.listen_path)
        try:
            yield proxy, qemu
        finally:
            qemu.close()


def test_launch_gives_the_predicted_pcrs(rig: tuple[TpmProxy, FakeQemu]) -> None:
    proxy, qemu = rig
    assert qemu.control(swtpm_ctrl.set_locality(0)) == bytes(4)
    assert tpmwire.response_code(qemu.tpm(STARTUP_CLEAR)) == 0
    expected = replay(sample_plan().events(), (Bank.SHA1, Bank.SHA256))
    for bank in (Bank.SHA1, Bank.SHA256):
        assert qemu.pcrs(bank, [17, 18, 19]) == expected[bank]
    # One value by hand: PCR 19 = H(H(0 || H(data)) ... ) with a single extend after reset.
    sha = hashlib.sha256
    assert expected[Bank.SHA256][19] == sha(bytes(32) + sha(b"initrd").digest()).digest()
    assert proxy.stats.launches == 1 and proxy.stats.errors == []


def test_unextended_bank_only_sees_the_hash_end(rig: tuple[TpmProxy, FakeQemu]) -> None:
    _proxy, qemu = rig
    qemu.reset()
    data = sample_plan().hash_data
    sha384 = hashlib.sha384
    assert qemu.pcrs(Bank.SHA384, [17, 18, 19]) == {
        17: sha384(bytes(48) + sha384(data).digest()).digest(),
        18: bytes(48),
        19: bytes(48),
    }


def test_guest_locality_is_restored(rig: tuple[TpmProxy, FakeQemu]) -> None:
    _proxy, qemu = rig
    assert qemu.control(swtpm_ctrl.set_locality(0)) == bytes(4)
    qemu.reset()
    extend = tpmwire.pcr_extend(17, {Bank.SHA256: bytes(32)})
    assert tpmwire.response_code(qemu.tpm(extend)) == TPM_RC_LOCALITY
    # And a PCR locality 0 may extend still works.
    assert tpmwire.response_code(qemu.tpm(tpmwire.pcr_extend(16, {Bank.SHA256: bytes(32)}))) == 0


def test_reset_launches_again_with_the_same_values(rig: tuple[TpmProxy, FakeQemu]) -> None:
    proxy, qemu = rig
    qemu.reset()
    first = qemu.pcrs(Bank.SHA256, [17, 18, 19])
    assert tpmwire.response_code(qemu.tpm(STARTUP_CLEAR)) != 0  # second Startup: no launch
    qemu.reset()
    assert qemu.pcrs(Bank.SHA256, [17, 18, 19]) == first
    assert proxy.stats.launches == 2 and proxy.stats.errors == []


def test_without_a_plan_the_drtm_pcrs_stay_unlaunched(tmp_path: Path) -> None:
    with (
        SwtpmProcess(tmp_path, tmp_path / "swtpm.log") as ctrl,
        TpmProxy(tmp_path / "ctrl.sock", ctrl, None) as proxy,
    ):
        qemu = FakeQemu(proxy.listen_path)
        qemu.reset()
        assert qemu.pcrs(Bank.SHA256, [17, 18]) == {17: b"\xff" * 32, 18: b"\xff" * 32}
        qemu.close()
        assert proxy.stats.launches == 0


def test_a_refused_extend_is_reported(tmp_path: Path) -> None:
    # PCR 20 refuses locality 4 extends on swtpm; the proxy must say so, not hide it.
    bad = LaunchPlan(b"x", [(4, Event.measuring(20, b"y", "k", "d", banks=[Bank.SHA256]))])
    with (
        SwtpmProcess(tmp_path, tmp_path / "swtpm.log") as ctrl,
        TpmProxy(tmp_path / "ctrl.sock", ctrl, bad) as proxy,
    ):
        qemu = FakeQemu(proxy.listen_path)
        qemu.reset()
        qemu.close()
    assert proxy.stats.launches == 0
    assert any("PCR 20" in e for e in proxy.stats.errors)


def test_qemu_may_reconnect(tmp_path: Path) -> None:
    with (
        SwtpmProcess(tmp_path, tmp_path / "swtpm.log") as ctrl,
        TpmProxy(tmp_path / "ctrl.sock", ctrl, sample_plan()) as proxy,
    ):
        first = FakeQemu(proxy.listen_path)
        first.reset()
        values = first.pcrs(Bank.SHA1, [17, 18, 19])
        first.close()
        second = FakeQemu(proxy.listen_path)  # a new QEMU on the same TPM, e.g. after a crash
        second.reset()
        assert second.pcrs(Bank.SHA1, [17, 18, 19]) == values
        second.close()
    assert proxy.stats.launches == 2 and proxy.stats.errors == []
