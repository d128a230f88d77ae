"""The installer disk image: GPT, GRUB for BIOS and UEFI, boot files, base and volumes.

Assembled on an image file without mounting anything (our hosts cannot scan the
partitions of loop devices): `sfdisk` writes the GPT, each file system is made in its
own image file (`mkfs.fat` + `mcopy`, `mke2fs -d`) and every partition's bytes are
written at its offset. Every identifier is derived from the inputs and every
timestamp is the build's epoch, so the same inputs give the same bytes.

Layout, in order (GPT names): `bios-boot` (GRUB core.img), `esp` (FAT32 with
EFI/BOOT/BOOTX64.EFI), `boot` (ext2: tboot, kernel, initramfs, grub/, acm/, the launch
policy and its NV script), `actvsm-base`, `actvsm-verity`, then one `actvsm-vol-<name>` per
volume (the names the initramfs looks for).
GRUB's built-in configuration finds the boot partition by its file system UUID
(`boot_uuid`) and reads grub/grub-bios.cfg or grub/grub-uefi.cfg there.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2

from builder import disklayout
from builder.digest import file_sha256
from builder.disklayout import MiB, Partition, Placed
from builder.errors import BuildError, InputError
from builder.fsimage import derived_uuid
from builder.paths import TEMPLATES
from builder.run import require_tool, run
from builder.tboot.grub import grubenv_block

GRUB_LIB = Path("/usr/lib/grub")
GRUB_PREFIX = "/grub"
BIOS_CFG = "grub-bios.cfg"
UEFI_CFG = "grub-uefi.cfg"
GRUBENV = "grubenv"  # the environment block grub.cfg reads the mode from (load_env)
ACM_DIR = "acm"
EFI_BOOT_PATH = "EFI/BOOT/BOOTX64.EFI"
BIOS_BOOT_SIZE = MiB
DEFAULT_ESP_SIZE = 64 * MiB  # FAT32 wants at least 65525 clusters
DEFAULT_BOOT_FREE = 16 * MiB  # room for SINIT ACMs an admin adds later
ZSTD_LEVEL = 3  # the base inside is compressed already: level 9 saves 0.2% for 3x the time

# Built into both GRUB images: no modules are read from disk.
COMMON_MODULES = (
    "part_gpt part_msdos ext2 fat normal configfile echo test search search_fs_uuid "
    "search_label multiboot2 gzio xzio serial terminal linux sleep loadenv"
).split()
BIOS_MODULES = ["biosdisk", "vbe", *COMMON_MODULES]
EFI_MODULES = ["efi_gop", "efi_uga", *COMMON_MODULES]

_BOOT_PATH = re.compile(r"[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_VOLUME = re.compile(r"[a-z0-9][a-z0-9-]{0,24}")  # GPT names: 36 UTF-16 units


def derive_boot_uuid(seed: bytes) -> str:
    """The boot file system's UUID for a build: render grub.cfg with it, pass it back here."""
    return derived_uuid(seed, "installer:boot-fs")


@dataclass(frozen=True)
class InstallerInput:
    """Everything the disk holds. `boot_files` maps a path in the boot partition to a file."""

    name: str
    boot_uuid: str
    grub_configs: Mapping[str, str]  # "bios" / "uefi" -> grub.cfg text
    boot_files: Mapping[str, Path]
    base: Path
    verity: Path | None = None
    volumes: Sequence[tuple[str, Path]] = ()
    epoch: int = 0
    esp_size: int = DEFAULT_ESP_SIZE
    boot_free: int = DEFAULT_BOOT_FREE

    def validate(self) -> None:
        if not _UUID.fullmatch(self.boot_uuid):
            raise InputError(f"boot_uuid {self.boot_uuid!r} is not a lower-case UUID")
        missing = {"bios", "uefi"} - set(self.grub_configs)
        if missing:
            raise InputError(
                f"grub configuration missing for {', '.join(sorted(missing))}",
                hint="render one per firmware with builder.tboot.grub.render_grub_config",
            )
        for text in self.grub_configs.values():
            if self.boot_uuid not in text:
                raise InputError(
                    "grub.cfg does not search for the boot partition's UUID "
                    f"{self.boot_uuid}: its paths would not resolve",
                    hint="pass boot_uuid=derive_boot_uuid(...) to render_grub_config",
                )
        for dest, src in self.boot_files.items():
            inside = PurePosixPath(dest)
            if not _BOOT_PATH.fullmatch(dest) or ".." in inside.parts:
                raise InputError(f"boot file name {dest!r}: use letters, digits, _.+- and /")
            if inside.parts[0] == "grub" and inside.name in (BIOS_CFG, UEFI_CFG):
                raise InputError(f"boot file {dest!r} is written by the installer itself")
            if not Path(src).is_file():
                raise InputError(f"boot file {dest!r}: {src} is not a file")
        for what, given in [("base image", self.base), ("verity tree", self.verity)]:
            if given is not None and not given.is_file():
                raise InputError(f"{what} {given} is not a file")
        names = [n for n, _ in self.volumes]
        if len(set(names)) != len(names):
            raise InputError(f"volume names listed twice: {names}")
        for vol, path in self.volumes:
            if not _VOLUME.fullmatch(vol):
                raise InputError(f"volume name {vol!r}: use 1-32 of a-z, 0-9 and '-'")
            if not path.is_file():
                raise InputError(f"volume {vol}: {path} is not a file")
        if self.esp_size < 40 * MiB or self.esp_size % MiB:
            raise InputError(f"ESP size {self.esp_size}: use a whole number of MiB, at least 40")


@dataclass(frozen=True)
class InstallerImage:
    path: Path
    size: int
    sha256: str
    disk_guid: str
    partitions: list[Placed]
    compressed: Path | None = None
    compressed_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.path.name,
            "size": self.size,
            "sha256": self.sha256,
            "disk_guid": self.disk_guid,
            "partitions": [
                {
                    "label": p.part.label,
                    "type": p.part.type_guid,
                    "uuid": p.part.uuid,
                    "start": p.start,
                    "size": p.part.size,
                }
                for p in self.partitions
            ],
            "compressed": None if self.compressed is None else self.compressed.name,
            "compressed_sha256": self.compressed_sha256,
        }


# -- file systems --------------------------------------------------------------------


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - GRUB script text from validated values
    )


def embedded_grub_config(boot_uuid: str, firmware: str) -> str:
    """The configuration built into the GRUB image for `firmware` (bios or uefi)."""
    return (
        _env()
        .get_template("grub-embed.cfg.j2")
        .render(
            boot_uuid=boot_uuid,
            firmware=firmware,
            prefix=GRUB_PREFIX,
            config=BIOS_CFG if firmware == "bios" else UEFI_CFG,
        )
    )


def grub_images(boot_uuid: str, work: Path) -> tuple[Path, Path]:
    """(core.img for i386-pc, BOOTX64.EFI for x86_64-efi), both with every module built in."""
    mkimage = require_tool("grub-mkimage", "make the GRUB boot images")
    out = []
    for firmware, target, modules, name, pkg in [
        ("bios", "i386-pc", BIOS_MODULES, "core.img", "grub-pc-bin"),
        ("uefi", "x86_64-efi", EFI_MODULES, "bootx64.efi", "grub-efi-amd64-bin"),
    ]:
        cfg = work / f"grub-embed-{firmware}.cfg"
        cfg.write_text(embedded_grub_config(boot_uuid, firmware))
        libdir = GRUB_LIB / target
        if not (libdir / "normal.mod").is_file():
            raise BuildError(
                f"GRUB's {target} modules are missing ({libdir})", hint=f"apt-get install {pkg}"
            )
        image = work / name
        argv: list[str | os.PathLike[str]] = [mkimage, "-O", target, "-d", libdir, "-c", cfg]
        run([*argv, "-p", GRUB_PREFIX, "-o", image, *modules], timeout=120)
        out.append(image)
    return out[0], out[1]


def _epoch_env(epoch: int) -> dict[str, str | None]:
    # E2FSPROGS_FAKE_TIME fixes e2fsprogs' clock; SOURCE_DATE_EPOCH mtools' and mkfs.fat's.
    return {"E2FSPROGS_FAKE_TIME": str(epoch), "SOURCE_DATE_EPOCH": str(epoch), "TZ": "UTC"}


def make_esp(
    efi_binary: Path, out: Path, *, size: int, volume_id: int, epoch: int, lba: int
) -> None:
    """FAT32 holding only EFI/BOOT/BOOTX64.EFI; fixed volume id, timestamps at `epoch`."""
    mkfs = require_tool("mkfs.fat", "make the EFI system partition")
    mmd = require_tool("mmd", "make directories on the EFI system partition")
    mcopy = require_tool("mcopy", "copy GRUB onto the EFI system partition")
    _sparse_file(out, size)
    env = _epoch_env(epoch) | {"MTOOLS_SKIP_CHECK": "1"}
    # --invariant first (fixed times, serial...), then -i overrides the serial with ours.
    run(
        [mkfs, "--invariant", "-F", "32", "-i", f"{volume_id:08X}", "-n", "ESP", "-h", str(lba)]
        + [os.fspath(out)],
        env=env,
        timeout=60,
    )
    run([mmd, "-i", out, "::EFI", "::EFI/BOOT"], env=env, timeout=60)
    staged = out.with_suffix(".efi")
    shutil.copyfile(efi_binary, staged)
    os.utime(staged, (epoch, epoch))
    run([mcopy, "-m", "-i", out, staged, "::" + EFI_BOOT_PATH], env=env, timeout=60)
    staged.unlink()


def make_boot_fs(
    files: Mapping[str, Path | bytes],
    dirs: Sequence[str],
    out: Path,
    *,
    free: int,
    fs_uuid: str,
    hash_seed: str,
    epoch: int,
    label: str = "actvsm-boot",
) -> int:
    """ext2 with `files` (path -> source or bytes) and empty `dirs`, all root-owned, dated
    `epoch`. mke2fs 1.47.0 copies each source's ctime, so debugfs then rewrites every
    inode's times. Returns the file system's size."""
    mke2fs = require_tool("mke2fs", "make the boot partition")
    debugfs = require_tool("debugfs", "fix the boot partition's timestamps")
    with tempfile.TemporaryDirectory(prefix="actvsm-boot-", dir=out.parent) as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        paths = set()
        for d in dirs:
            (root / d).mkdir(parents=True, exist_ok=True)
        for dest, src in sorted(files.items()):
            target = root / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, bytes):
                target.write_bytes(src)
            else:
                shutil.copyfile(src, target)
            target.chmod(0o644)
        total = 0
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            paths.add("/" + rel)
            if path.is_dir():
                path.chmod(0o755)
            total += disklayout.round_up(path.stat().st_size, 4096) + 4096
        for path in [*sorted(root.rglob("*"), reverse=True), root]:
            os.utime(path, (epoch, epoch), follow_symlinks=False)
        size = disklayout.round_up(total + total // 10 + free + 4 * MiB)
        _sparse_file(out, size)
        env = _epoch_env(epoch)
        run(
            [mke2fs, "-q", "-F", "-t", "ext2", "-b", "4096", "-I", "256", "-L", label]
            + ["-U", fs_uuid, "-E", f"hash_seed={hash_seed},root_owner=0:0", "-d", root, out],
            env=env,
            timeout=300,
        )
        script = Path(tmp) / "times.debugfs"
        lines = []
        for p in ["/", "/lost+found", *sorted(paths)]:
            for fld in ("atime", "ctime", "mtime", "crtime"):
                lines.append(f"set_inode_field {p} {fld} {epoch}")
        script.write_text("\n".join(lines) + "\n")
        proc = run([debugfs, "-w", "-f", script, out], env=env, timeout=300)
        errors = [
            ln for ln in proc.stderr.decode(errors="replace").splitlines() if "debugfs" not in ln
        ]
        if errors:
            raise BuildError("debugfs could not set the boot partition's times: " + errors[0])
    return size


def _sparse_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


# -- assembling ------------------------------------------------------------------------

_CHUNK = 1 << 20


def _write_at(fd: int, offset: int, source: Path, limit: int) -> None:
    """Copy `source` to `offset`, leaving all-zero chunks as holes (the image is sparse)."""
    size = source.stat().st_size
    if size > limit:
        raise BuildError(f"{source.name} ({size} bytes) does not fit its partition ({limit})")
    zero = bytes(_CHUNK)
    with open(source, "rb") as f:
        pos = 0
        while chunk := f.read(_CHUNK):
            if chunk != zero[: len(chunk)]:
                _pwrite_all(fd, chunk, offset + pos)
            pos += len(chunk)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def assemble(spec: InstallerInput, out: Path, *, compress: bool = True) -> InstallerImage:
    """Write the disk image to `out` (and `out`.zst, both with .sha256 files)."""
    spec.validate()
    require_tool("sfdisk", "write the GPT partition table")
    seed = hashlib.sha256(spec.name.encode() + b"\0" + spec.boot_uuid.encode()).digest()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="actvsm-installer-", dir=out.parent) as tmp:
        work = Path(tmp)
        core, efi = grub_images(spec.boot_uuid, work)
        boot_fs = work / "boot.ext2"
        files: dict[str, Path | bytes] = dict(spec.boot_files)
        files[f"grub/{BIOS_CFG}"] = spec.grub_configs["bios"].encode()
        files[f"grub/{UEFI_CFG}"] = spec.grub_configs["uefi"].encode()
        files[f"grub/{GRUBENV}"] = grubenv_block({})  # empty: GRUB's default entry
        make_boot_fs(
            files,
            [ACM_DIR, "grub"],
            boot_fs,
            free=spec.boot_free,
            fs_uuid=spec.boot_uuid,
            hash_seed=derived_uuid(seed, "installer:boot-hash-seed"),
            epoch=spec.epoch,
        )
        esp_lba = (disklayout.ALIGN + BIOS_BOOT_SIZE) // disklayout.SECTOR
        esp = work / "esp.fat"
        volume_id = int.from_bytes(hashlib.sha256(seed + b"esp").digest()[:4], "little")
        make_esp(efi, esp, size=spec.esp_size, volume_id=volume_id, epoch=spec.epoch, lba=esp_lba)

        contents: list[tuple[str, str, Path]] = [
            ("bios-boot", disklayout.BIOS_BOOT, core),
            ("esp", disklayout.ESP, esp),
            ("boot", disklayout.XBOOTLDR, boot_fs),
            ("actvsm-base", disklayout.ROOT_X86_64, spec.base),
        ]
        if spec.verity is not None:
            contents.append(("actvsm-verity", disklayout.ROOT_VERITY_X86_64, spec.verity))
        contents += [(f"actvsm-vol-{n}", disklayout.LINUX_DATA, p) for n, p in spec.volumes]

        parts: list[Partition] = []
        whole = hashlib.sha256(seed)
        for label, type_guid, path in contents:
            digest = file_sha256(path)
            whole.update(label.encode() + b"\0" + digest)
            size = BIOS_BOOT_SIZE if label == "bios-boot" else path.stat().st_size
            uuid = derived_uuid(digest, f"installer:part:{label}")
            parts.append(Partition(label, type_guid, disklayout.round_up(size), uuid))
        try:
            placed, disk_size = disklayout.place(parts)
        except disklayout.LayoutError as exc:
            raise BuildError(str(exc)) from None
        assert placed[1].start_lba == esp_lba
        disk_guid = derived_uuid(whole.digest(), "installer:disk")

        tmp_img = work / "disk.img"
        _sparse_file(tmp_img, disk_size)
        run(
            ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", "--wipe", "never", tmp_img],
            input=disklayout.sfdisk_script(placed, disk_guid).encode(),
            timeout=60,
        )
        bios = placed[0]
        boot_img = (GRUB_LIB / "i386-pc" / "boot.img").read_bytes()
        try:
            core_bytes = disklayout.grub_core_image(
                core.read_bytes(), bios.start_lba, bios.part.size
            )
            with open(tmp_img, "rb") as f:
                mbr = f.read(disklayout.SECTOR)
            sector0 = disklayout.grub_boot_sector(boot_img, mbr, bios.start_lba)
        except disklayout.LayoutError as exc:
            raise BuildError(f"GRUB BIOS boot: {exc}") from None
        fd = os.open(tmp_img, os.O_WRONLY)
        try:
            _pwrite_all(fd, sector0, 0)
            _pwrite_all(fd, core_bytes, bios.start)
            for p, (_, _, path) in zip(placed[1:], contents[1:], strict=True):
                _write_at(fd, p.start, path, p.part.size)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_img, out)
    image_sha256 = write_sha256_file(out)
    if not compress:
        return InstallerImage(out, disk_size, image_sha256, disk_guid, placed)
    zst = out.with_name(out.name + ".zst")
    compress_zstd(out, zst)
    return InstallerImage(
        out, disk_size, image_sha256, disk_guid, placed, zst, write_sha256_file(zst)
    )


def compress_zstd(src: Path, dest: Path, *, level: int = ZSTD_LEVEL) -> None:
    """zstd at a fixed level in multi-threaded mode, whose output does not depend on the
    number of threads (-T1 and -T2 give the same bytes): reproducible and fast.
    Reading the file (not a pipe) records the content size in the frame header."""
    zstd = require_tool("zstd", "compress the installer image")
    tmp = dest.with_name(dest.name + ".tmp")
    run([zstd, f"-{level}", "-T0", "-q", "-f", "--no-progress", src, "-o", tmp], timeout=3600)
    os.replace(tmp, dest)


def write_sha256_file(path: Path) -> str:
    """`path`.sha256 in sha256sum's format (`sha256sum -c` checks it); returns the digest."""
    digest = file_sha256(path).hex()
    side = path.with_name(path.name + ".sha256")
    side.write_text(f"{digest}  {path.name}\n")
    return digest
