"""The PCR engine against a real TPM: swtpm extends the same events, we read its PCRs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tpm2_pytss import ESAPI, TCTILdr
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
from tpm2_pytss.types import TPML_DIGEST_VALUES, TPML_PCR_SELECTION, TPMT_HA, TPMU_HA

from builder.banks import ALL_BANKS, Bank
from builder.pcr import Event, replay
from builder.run import run
from builder.swtpm import Swtpm

# PCRs a locality-0 client may extend (PC Client profile): 0-16 and 23.
LOCALITY0_PCRS = [*range(17), 23]
ALG = {
    Bank.SHA1: TPM2_ALG.SHA1,
    Bank.SHA256: TPM2_ALG.SHA256,
    Bank.SHA384: TPM2_ALG.SHA384,
    Bank.SHA512: TPM2_ALG.SHA512,
}


class Tpm:
    """Just enough ESAPI for extend and read."""

    def __init__(self, swtpm: Swtpm) -> None:
        self.tcti = TCTILdr("swtpm", f"host=127.0.0.1,port={swtpm.port}")
        self.esapi = ESAPI(self.tcti)

    def close(self) -> None:
        self.esapi.close()

    def extend(self, event: Event) -> None:
        values = TPML_DIGEST_VALUES(
            [
                TPMT_HA(hashAlg=ALG[bank], digest=TPMU_HA(**{bank.value: digest}))
                for bank, digest in sorted(event.digests.items())
            ]
        )
        self.esapi.pcr_extend(ESYS_TR.PCR0 + event.pcr, values)

    def read(self, pcrs: Sequence[int]) -> dict[Bank, dict[int, bytes]]:
        out: dict[Bank, dict[int, bytes]] = {}
        for bank in ALL_BANKS:
            out[bank] = {}
            wanted = sorted(set(pcrs))
            for i in range(0, len(wanted), 8):  # TPM2_PCR_Read returns at most 8 digests
                chunk = wanted[i : i + 8]
                spec = f"{bank.value}:{','.join(map(str, chunk))}"
                _, sel, digests = self.esapi.pcr_read(TPML_PCR_SELECTION.parse(spec))
                got = [bytes(d) for d in digests]
                assert len(got) == len(chunk), f"TPM returned {len(got)} of {len(chunk)} PCRs"
                out[bank].update(zip(chunk, got, strict=True))
        return out


@pytest.fixture(scope="module")
def tpm() -> Iterator[Tpm]:
    with Swtpm() as sw:
        t = Tpm(sw)
        try:
            yield t
        finally:
            t.close()


def digests_for(banks: Sequence[Bank]) -> st.SearchStrategy[dict[Bank, bytes]]:
    return st.fixed_dictionaries({b: st.binary(min_size=b.size, max_size=b.size) for b in banks})


@st.composite
def events(draw: st.DrawFn) -> list[Event]:
    pcrs = draw(st.lists(st.sampled_from(LOCALITY0_PCRS), min_size=1, max_size=4, unique=True))
    n = draw(st.integers(min_value=1, max_value=8))
    out = []
    for _ in range(n):
        # Usually every bank; sometimes a subset: banks left out are not extended.
        banks = draw(
            st.one_of(
                st.just(list(ALL_BANKS)),
                st.lists(st.sampled_from(ALL_BANKS), min_size=1, max_size=4, unique=True),
            )
        )
        out.append(Event(draw(st.sampled_from(pcrs)), draw(digests_for(banks)), "test", "random"))
    return out


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(evs=events())
def test_engine_equals_swtpm(tpm: Tpm, evs: list[Event]) -> None:
    pcrs = sorted({e.pcr for e in evs})
    start = tpm.read(pcrs)  # the module's TPM keeps earlier examples' extends
    for ev in evs:
        tpm.extend(ev)
    assert tpm.read(pcrs) == replay(evs, ALL_BANKS, start=start)


def test_engine_from_reset_equals_swtpm(swtpm: Swtpm) -> None:
    """From a fresh TPM, without `start`: initial values 0 (and 0xFF for 17-22)."""
    t = Tpm(swtpm)
    try:
        evs = [
            Event.measuring(0, b"firmware", "test", "a"),
            Event.measuring(7, b"secure boot", "test", "b", banks=[Bank.SHA256]),
            Event.measuring(0, b"more", "test", "c", banks=[Bank.SHA1, Bank.SHA512]),
            Event.measuring(23, b"app", "test", "d"),
        ]
        for ev in evs:
            t.extend(ev)
        got = t.read([0, 7, 17, 23])
        want = replay(evs, ALL_BANKS, late_launch=False)
        for bank in ALL_BANKS:
            assert got[bank][17] == b"\xff" * bank.size
            for pcr in (0, 7, 23):
                assert got[bank][pcr] == want[bank][pcr]
    finally:
        t.close()


def test_drtm_pcrs_at_locality_2_start_from_ones(swtpm: Swtpm) -> None:
    """Without a late launch PCR 17/18 start at 0xFF..; extends at locality 2 match."""
    t = Tpm(swtpm)
    try:
        t.tcti.set_locality(2)
        evs = [
            Event.measuring(17, b"sinit", "test", "a"),
            Event.measuring(18, b"tboot", "test", "b"),
            Event.measuring(17, b"policy", "test", "c"),
        ]
        for ev in evs:
            t.extend(ev)
        t.tcti.set_locality(0)
        assert t.read([17, 18]) == replay(evs, ALL_BANKS, late_launch=False)
    finally:
        t.close()


def test_late_launch_then_events_match(swtpm: Swtpm) -> None:
    """After swtpm's emulated late launch (Hash_Start/Data/End at locality 4) PCR 17
    = Ext(0, H(data)) and 18 = 0: the engine's late_launch=True start, in all banks."""
    data = b"actvsm test DRTM payload"
    run(
        ["swtpm_ioctl", "--tcp", f"127.0.0.1:{swtpm.ctrl_port}", "-h", "-"],
        input=data,
        timeout=30,
    )
    t = Tpm(swtpm)
    try:
        t.tcti.set_locality(2)
        evs = [
            Event.measuring(17, data, "drtm", "hash of the launched code"),
            Event.measuring(18, b"mle", "test", "b"),
            Event.measuring(19, b"modules", "test", "c"),
        ]
        for ev in evs[1:]:
            t.extend(ev)
        t.tcti.set_locality(0)
        want = replay(evs, ALL_BANKS, late_launch=True)
        got = t.read([17, 18, 19])
        assert got == want
        # the first step checked independently of the engine: Ext(0, H(data))
        h = hashlib.sha256(data).digest()
        assert hashlib.sha256(bytes(32) + h).digest() == got[Bank.SHA256][17]
    finally:
        t.close()
