"""The measured initramfs: the rendered init and its hooks, busybox, cryptsetup,
veritysetup and tpm2-tools with their library closure, and the kernel modules they need,
all taken from the base tree and packed reproducibly (`builder.initramfs_archive`).

Everything the init decides comes from the definition rendered into it (volumes, their
modes and mount points, the phase-cap event) or from the measured kernel command line
(mode, root hash or digest): nothing on an unmeasured disk steers it.
"""

from __future__ import annotations

from pathlib import Path

from builder.config import ImageDefinition
from builder.errors import BuildError
from builder.initramfs_archive import Archive, Compression
from builder.predict import phase_cap_event
from builder.seal.script import unseal_script
from builder.templating import render

# Modules the init loads, in this order (dependencies are added from modules.dep).
# crc32c_generic, ecb/xts (for aes-xts) and the AF_ALG ones are requested through the
# crypto API, which would call modprobe; the initramfs has none, so they load up front.
MODULES = (
    "virtio_pci",
    "virtio_blk",
    "dm_mod",
    "dm_verity",
    "dm_crypt",
    "ecb",
    "xts",
    "algif_skcipher",
    "algif_hash",
    "crc32c_generic",
    "squashfs",
    "overlay",
    "ext4",
)
FORMAT_MODULES = {"squashfs": (), "erofs": ("erofs",)}
BINARIES = (
    "bin/busybox",
    "usr/sbin/cryptsetup",
    "usr/sbin/veritysetup",
    "usr/bin/tpm2",
)
# dlopen()ed by libtss2-tctildr, so not in any ELF header.
DLOPENED = ("usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0",)
# The tpm2-tools names the init and the unseal script call (all the `tpm2` binary).
TPM2_TOOLS = (
    "createprimary",
    "flushcontext",
    "import",
    "load",
    "pcrextend",
    "policyor",
    "policypcr",
    "readpublic",
    "sessionconfig",
    "startauthsession",
    "unseal",
)
INITRAMFS_VERSION = 3


def modules_for(defn: ImageDefinition) -> tuple[str, ...]:
    return MODULES + FORMAT_MODULES.get(defn.base.format, ())


def build_initramfs(defn: ImageDefinition, root: Path, kernel_version: str) -> bytes:
    archive = Archive()
    archive.add_basic_devices()
    for d in ("proc", "sys", "dev", "run", "tmp", "sysroot", "etc", "usr/bin", "usr/sbin"):
        archive.add_dir(d)
    for binary in (*BINARIES, *DLOPENED):
        archive.add_binary(root, _find(root, binary))
    for tool in TPM2_TOOLS:
        archive.add_symlink(f"usr/bin/tpm2_{tool}", "tpm2")
    modules = archive.add_modules(root, kernel_version, modules_for(defn))
    archive.add_bytes("etc/actvsm/unseal.sh", unseal_script().encode(), 0o755)
    archive.add_bytes("init", render_init(defn, modules).encode(), 0o755)
    return archive.build(Compression.GZIP, mtime=defn.source_date_epoch)


def render_init(defn: ImageDefinition, modules: list[str]) -> str:
    cap = phase_cap_event(defn.sealing.phase_pcr)
    return render(
        "init.j2",
        image=defn.name,
        modes=[m.name for m in defn.modes],
        keyless_modes=[m.name for m in defn.modes if not m.keys],
        modules=modules,
        fs_type=defn.base.format,
        volumes=[
            {
                "name": v.name,
                "modes": list(v.modes),
                "mount": v.mount or "",
                "filesystem": v.filesystem,
            }
            for v in defn.volumes
        ],
        cap_pcr=cap.pcr,
        cap_digests={b.value: d.hex() for b, d in cap.digests.items()},
    )


def _find(root: Path, path: str) -> str:
    """`path` in the tree, or its /usr twin (busybox may be /usr/bin/busybox, tools may
    sit in /sbin on a tree without merged /usr)."""
    name = Path(path).name
    candidates = [path] + [f"{d}/{name}" for d in ("bin", "sbin", "usr/bin", "usr/sbin")]
    if "lib" in path:
        candidates = [path, path.removeprefix("usr/")]
    for candidate in candidates:
        if (root / candidate).exists() or (root / candidate).is_symlink():
            return candidate
    raise BuildError(
        f"the base tree {root} has no {path}; the initramfs needs it",
        hint="add the package that provides it (cryptsetup-bin, tpm2-tools, "
        "libtss2-tcti-device0, busybox) to base.packages",
    )
