"""The boot files taken from the base tree: the kernel and tboot (the MLE)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.config import ImageDefinition
from builder.elfdeps import resolve_in_root
from builder.errors import InputError

TBOOT_PATH = "boot/tboot.gz"


@dataclass(frozen=True)
class BootFiles:
    kernel: Path  # on the host, inside the tree
    kernel_version: str  # the part after "vmlinuz-": the modules directory's name
    tboot: Path


def find_boot_files(defn: ImageDefinition, root: Path) -> BootFiles:
    if defn.kernel.image is not None:
        kernel = resolve_in_root(root, defn.kernel.image.lstrip("/"))
        if kernel is None or not kernel.is_file():
            raise InputError(
                f"kernel.image {defn.kernel.image} is not a file in the base tree",
                hint="give the kernel's path inside the base, e.g. /boot/vmlinuz-6.1.0-13-amd64",
            )
    else:
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        if len(kernels) != 1:
            found = ", ".join(k.name for k in kernels) or "none"
            raise InputError(
                f"expected exactly one /boot/vmlinuz-* in the base tree, found {found}",
                hint="install one kernel (linux-image-amd64) or set kernel.image",
            )
        kernel = kernels[0]
    tboot = resolve_in_root(root, TBOOT_PATH)
    if tboot is None or not tboot.is_file():
        raise InputError(
            f"/{TBOOT_PATH} is missing in the base tree",
            hint="add the package 'tboot' to base.packages",
        )
    version = kernel.name.removeprefix("vmlinuz-")
    return BootFiles(kernel=kernel, kernel_version=version, tboot=tboot)
