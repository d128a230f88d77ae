"""What the rig's emulated late launch does to the TPM, and what it predicts. Pure.

On real hardware SINIT and tboot perform the launch; in QEMU the rig does it over
swtpm's control channel: HASH_START/DATA/END at locality 4 with `hash_data` (which resets
PCR 17-22 to zero and extends H(hash_data) into PCR 17 in every active bank), then each
extend at its locality. `events()` is the same launch as `builder.pcr.Event`s, so
`builder.pcr.replay(plan.events(), late_launch=True)` predicts the guest's PCRs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from builder.banks import ALL_BANKS, Bank
from builder.pcr import Event

# Localities allowed to extend the DRTM PCRs the launch uses (seen on swtpm: 17/18 from
# 2-4, 19 from 2-3). Other PCRs are left to the TPM to accept or refuse.
_EXTEND_LOCALITIES = {17: (2, 3, 4), 18: (2, 3, 4), 19: (2, 3)}


@dataclass(frozen=True)
class LaunchPlan:
    hash_data: bytes
    extends: Sequence[tuple[int, Event]] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for locality, event in self.extends:
            allowed = _EXTEND_LOCALITIES.get(event.pcr, (0, 1, 2, 3, 4))
            if locality not in allowed:
                raise ValueError(
                    f"{event.kind}: PCR {event.pcr} cannot be extended from locality "
                    f"{locality}; use one of {', '.join(map(str, allowed))}"
                )
            if not event.digests:
                raise ValueError(f"{event.kind}: an extend needs at least one digest")

    def launch_event(self, banks: Iterable[Bank] = ALL_BANKS) -> Event:
        """PCR 17's first extend: H(hash_data) in every bank, as HASH_END performs it."""
        return Event.measuring(
            17,
            self.hash_data,
            "drtm-hash",
            "data hashed by HASH_START/DATA/END at locality 4",
            banks=banks,
            source="rig",
        )

    def events(self, banks: Iterable[Bank] = ALL_BANKS) -> list[Event]:
        """Every extend of this launch in order, for `builder.pcr.replay(late_launch=True)`."""
        return [self.launch_event(banks), *(event for _, event in self.extends)]
