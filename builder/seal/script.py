"""The initramfs's unseal script (templates/unseal.sh.j2): tpm2-tools only, no Python."""

from __future__ import annotations

from builder.seal.srk import SRK_HANDLE
from builder.templating import render

TEMPLATE = "unseal.sh.j2"


def unseal_script(srk_handle: int = SRK_HANDLE) -> str:
    """The POSIX sh script (busybox ash compatible) as text."""
    return render(TEMPLATE, srk_handle=f"0x{srk_handle:08x}")
