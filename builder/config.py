"""The image definition: one table of settings, one typed, frozen result.

Every field is declared once below (key, parser, default, help). The same
declarations validate YAML with file/line/field errors and write
`docs/definition.md` (`actvsm schema --markdown`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from builder import paths
from builder.banks import Bank
from builder.schema import (
    Ctx,
    Field,
    Section,
    boolean,
    choice,
    existing_path,
    integer,
    list_of,
    load_yaml_node,
    mapping_pairs,
    markdown_table,
    size,
    string,
)

NAME_RE = r"[a-z0-9][a-z0-9-]{0,62}"
NAME_HINT = "use 1-63 lowercase letters, digits and '-', starting with a letter or digit"
# GPT partition names hold 36 UTF-16 units: "actvsm-vol-" + 25.
VOLUME_NAME_RE = r"[a-z0-9][a-z0-9-]{0,24}"
VOLUME_NAME_HINT = "use 1-25 lowercase letters, digits and '-', starting with a letter or digit"
PACKAGE_RE = r"[a-z0-9][a-z0-9+.-]+"
# A kernel/tboot argument as GRUB passes it: no quotes, no shell-special characters.
CMDLINE_RE = r"[A-Za-z0-9_.,:=/+@%-]+(?: [A-Za-z0-9_.,:=/+@%-]+)*"
CMDLINE_HINT = (
    "space-separated arguments of letters, digits and _.,:=/+@%-; no quotes, no double spaces: "
    "the measured string must equal what GRUB passes"
)
RESERVED_CMDLINE_KEYS = ("actvsm.mode", "actvsm.roothash", "actvsm.digest", "root")
REQUIRED_MODES = ("normal", "admin", "update")
MAX_VOLUMES = 16
_EMPTY = yaml.MappingNode("tag:yaml.org,2002:map", [])  # an absent section: all defaults


def cmdline(ctx: Ctx, node: yaml.Node) -> str:
    value = string(CMDLINE_RE, hint=CMDLINE_HINT, max_len=2048)(ctx, node) if node.value else ""
    for arg in value.split():
        key = arg.split("=", 1)[0]
        if key in RESERVED_CMDLINE_KEYS:
            raise ctx.error(
                node, f"'{key}=' is set by actvsm", f"remove '{arg}' from the command line"
            )
    return value


def _base_check(ctx: Ctx, node: yaml.MappingNode, out: dict[str, Any]) -> None:
    sources = [k for k in ("tree", "tarball") if out[k] is not None]
    if len(sources) > 1:
        raise ctx.error(node, "give at most one of 'tree' and 'tarball'")
    if out["tree"] is not None and out["extra_tree"] is not None:
        raise ctx.error(
            node,
            "'extra_tree' applies to mkosi and tarball bases",
            "put the files into 'tree' itself",
        )
    if sources and out["packages"]:
        raise ctx.error(
            node, f"'packages' has no effect with a prebuilt '{sources[0]}'", "remove 'packages'"
        )


BASE = Section(
    "base",
    [
        Field(
            "distribution",
            choice("debian"),
            "distribution mkosi installs",
            default="debian",
            type_doc="`debian`",
        ),
        Field(
            "release",
            string(r"[a-z]+", hint="e.g. bookworm"),
            "distribution release",
            default="bookworm",
            type_doc="string",
        ),
        Field(
            "packages",
            list_of(string(PACKAGE_RE, hint="a Debian package name"), unique=True),
            "packages installed on top of the minimal system",
            default=list,
            type_doc="list of strings",
        ),
        Field(
            "mirror",
            string(r"https?://\S+", hint="an http(s) URL"),
            "package mirror (default: mkosi's)",
            type_doc="URL",
        ),
        Field(
            "tree",
            existing_path("dir"),
            "a prebuilt root directory used instead of mkosi (relative to this file)",
            type_doc="path",
        ),
        Field(
            "tarball",
            existing_path("file"),
            "a prebuilt root tarball used instead of mkosi (relative to this file)",
            type_doc="path",
        ),
        Field(
            "extra_tree",
            existing_path("dir"),
            "files copied over the installed tree (units, workloads); mkosi or tarball only",
            type_doc="path",
        ),
        Field(
            "format",
            choice("squashfs", "erofs"),
            "read-only file system of the base image",
            default="squashfs",
            type_doc="`squashfs` \\| `erofs`",
        ),
        Field(
            "compression",
            choice("zstd", "lz4", "xz", "gzip", "none"),
            "compression of the base image",
            default="zstd",
            type_doc="string",
        ),
        Field(
            "compression_level",
            integer(1, 22),
            "compression level (zstd 1-22; default fast: 3)",
            default=3,
            type_doc="integer",
        ),
        Field(
            "hostname",
            string(NAME_RE, hint=NAME_HINT),
            "hostname baked into the base",
            type_doc="string",
        ),
    ],
    "what the read-only base system is made of",
    extra_check=_base_check,
)

KERNEL = Section(
    "kernel",
    [
        Field(
            "cmdline",
            cmdline,
            "arguments for every mode; actvsm appends root hash and mode",
            default="console=ttyS0",
            type_doc="string",
        ),
        Field(
            "image",
            string(r"/\S+", hint="an absolute path inside the base"),
            "kernel inside the base (default: the only /boot/vmlinuz-*)",
            type_doc="path",
        ),
    ],
)

TBOOT = Section(
    "tboot",
    [
        Field(
            "cmdline",
            cmdline,
            "tboot's own command line (measured by SINIT via the MLE hash)",
            default="logging=serial,memory",
            type_doc="string",
        ),
        Field(
            "policy_type",
            choice("nonfatal", "continue", "halt"),
            "launch policy type written to NV",
            default="halt",
            type_doc="string",
        ),
    ],
)

MODE = Section(
    "mode",
    [
        Field(
            "name",
            string(NAME_RE, hint=NAME_HINT),
            "mode name (actvsm.mode=)",
            required=True,
            type_doc="string",
        ),
        Field(
            "cmdline", cmdline, "extra kernel arguments of this mode", default="", type_doc="string"
        ),
        Field(
            "description",
            string(max_len=200),
            "what the mode is for",
            default="",
            type_doc="string",
        ),
        Field(
            "keys",
            boolean,
            "false: a recovery mode that never unseals keys",
            default=True,
            type_doc="boolean",
        ),
    ],
)

VOLUME = Section(
    "volume",
    [
        Field(
            "name",
            string(VOLUME_NAME_RE, hint=VOLUME_NAME_HINT),
            "volume name (its installer partition is actvsm-vol-<name>)",
            required=True,
            type_doc="string",
        ),
        Field(
            "size",
            size(minimum=32 << 20, maximum=1 << 40, align=1 << 20),
            "size of the LUKS2 image (at least 32M, whole MiB)",
            required=True,
            type_doc="size",
        ),
        Field(
            "filesystem",
            choice("ext4", "none"),
            "file system inside",
            default="ext4",
            type_doc="`ext4` \\| `none`",
        ),
        Field(
            "modes",
            list_of(string(NAME_RE, hint=NAME_HINT), unique=True, min_items=1, max_items=8),
            "boot modes whose PCR values may unseal the key (PolicyOR, at most 8)",
            required=True,
            type_doc="list of mode names",
        ),
        Field(
            "content",
            existing_path("dir"),
            "directory copied into the volume at build",
            type_doc="path",
        ),
        Field(
            "mount",
            string(r"/[A-Za-z0-9_./-]*", hint="an absolute path"),
            "where the appliance mounts it",
            type_doc="path",
        ),
        Field(
            "recovery_passphrase",
            boolean,
            "also add an argon2id passphrase keyslot",
            default=False,
            type_doc="boolean",
        ),
    ],
)

SEALING = Section(
    "sealing",
    [
        Field(
            "bank",
            choice(*(b.value for b in Bank)),
            "PCR bank the policies use",
            default="sha256",
            type_doc="string",
        ),
        Field(
            "pcrs",
            list_of(integer(0, 23), unique=True, min_items=1),
            "PCRs every volume policy covers",
            default=lambda: [11, 17, 18, 19],
            type_doc="list of integers",
        ),
        Field(
            "phase_pcr",
            integer(0, 23),
            "PCR the initramfs extends to cap unsealing",
            default=11,
            type_doc="integer",
        ),
    ],
)

OUTPUT = Section(
    "output",
    [
        Field(
            "installer",
            boolean,
            "write the GPT installer disk image",
            default=True,
            type_doc="boolean",
        ),
        Field(
            "compress_installer",
            boolean,
            "also write installer.img.zst and its .sha256",
            default=True,
            type_doc="boolean",
        ),
        Field(
            "event_log",
            boolean,
            "export predicted events as TCG CEL JSON",
            default=True,
            type_doc="boolean",
        ),
    ],
)


def _modes(ctx: Ctx, node: yaml.Node) -> list[dict[str, Any]]:
    modes: list[dict[str, Any]] = list_of(MODE, min_items=1, max_items=16)(ctx, node)
    seen: dict[str, int] = {}
    for i, mode in enumerate(modes):
        if mode["name"] in seen:
            raise (
                ctx.child(i)
                .child("name")
                .error(
                    node.value[i],
                    f"duplicate mode name '{mode['name']}' (also entry {seen[mode['name']]})",
                )
            )
        seen[mode["name"]] = i
    missing = [m for m in REQUIRED_MODES if m not in seen]
    if missing:
        raise ctx.error(
            node,
            f"missing boot mode(s): {', '.join(missing)}",
            f"an appliance has at least the modes {', '.join(REQUIRED_MODES)}",
        )
    return modes


def _volumes(ctx: Ctx, node: yaml.Node) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = list_of(VOLUME, max_items=MAX_VOLUMES)(ctx, node)
    seen: set[str] = set()
    for i, vol in enumerate(volumes):
        if vol["name"] in seen:
            raise (
                ctx.child(i)
                .child("name")
                .error(node.value[i], f"duplicate volume name '{vol['name']}'")
            )
        seen.add(vol["name"])
        if vol["content"] is not None and vol["filesystem"] == "none":
            raise (
                ctx.child(i)
                .child("content")
                .error(node.value[i], "'content' needs a file system", "set filesystem: ext4")
            )
    return volumes


def _platform(ctx: Ctx, node: yaml.Node) -> Path:
    text = string()(ctx, node)
    if re.fullmatch(NAME_RE, text):
        path = paths.PLATFORMS / f"{text}.yaml"
    else:
        path = (ctx.base_dir / text).resolve()
    if not path.is_file():
        raise ctx.error(
            node,
            f"platform profile {text!r} not found (looked for {path})",
            f"use a profile name from {paths.PLATFORMS} or a path to a profile file",
        )
    return path


def _definition_check(ctx: Ctx, node: yaml.MappingNode, out: dict[str, Any]) -> None:
    pairs = mapping_pairs(ctx, node)
    modes = {m["name"]: m for m in out["modes"]}
    for i, vol in enumerate(out["volumes"]):
        vnode = pairs["volumes"][1].value[i]
        modes_node = mapping_pairs(ctx, vnode)["modes"][1]
        for j, mode in enumerate(vol["modes"]):
            vctx = ctx.child("volumes").child(i).child("modes").child(j)
            item = modes_node.value[j]
            if mode not in modes:
                raise vctx.error(
                    item,
                    f"volume '{vol['name']}' names mode '{mode}', which is not defined",
                    f"define it under 'modes' or use one of: {', '.join(modes)}",
                )
            if not modes[mode]["keys"]:
                raise vctx.error(
                    item,
                    f"mode '{mode}' is a recovery mode (keys: false)",
                    "a recovery mode never unseals; remove it from the volume",
                )
    sealing = out["sealing"]
    if sealing["phase_pcr"] not in sealing["pcrs"]:
        raise (
            ctx.child("sealing")
            .child("phase_pcr")
            .error(
                pairs["sealing"][1] if "sealing" in pairs else node,
                f"phase PCR {sealing['phase_pcr']} is not among sealing.pcrs",
                "without it the cap would not stop later unsealing",
            )
        )


def optional_section(key: str, section: Section, help: str) -> Field:
    """A section that may be left out: then every field in it takes its default."""
    return Field(
        key, section, help, default=lambda: section(Ctx(Path("-")), _EMPTY), type_doc="mapping"
    )


DEFINITION = Section(
    "definition",
    [
        Field(
            "name",
            string(NAME_RE, hint=NAME_HINT),
            "image name; output goes to OUTDIR/<name>/",
            required=True,
            type_doc="string",
        ),
        Field("description", string(max_len=500), "free text", default="", type_doc="string"),
        Field("base", BASE, "the read-only base system", required=True, type_doc="mapping"),
        optional_section("kernel", KERNEL, "kernel settings"),
        optional_section("tboot", TBOOT, "tboot settings"),
        Field(
            "modes",
            _modes,
            "boot modes; at least normal, admin and update",
            required=True,
            type_doc="list of mappings",
        ),
        Field(
            "integrity",
            choice("verity", "full-hash"),
            "how the initramfs protects the base",
            default="verity",
            type_doc="`verity` \\| `full-hash`",
        ),
        Field(
            "platform",
            _platform,
            "platform profile: a name in images/platforms/ or a path",
            default=None,
            required=True,
            type_doc="string",
        ),
        Field(
            "volumes", _volumes, "sealed LUKS2 volumes", default=list, type_doc="list of mappings"
        ),
        optional_section("sealing", SEALING, "policy settings shared by all volumes"),
        optional_section("output", OUTPUT, "which artifacts to write"),
        Field(
            "source_date_epoch",
            integer(0, 2**32 - 1),
            "timestamp for every file time in the artifacts",
            default=0,
            type_doc="integer",
        ),
    ],
    extra_check=_definition_check,
)


@dataclass(frozen=True)
class BaseConfig:
    distribution: str
    release: str
    packages: tuple[str, ...]
    mirror: str | None
    tree: Path | None
    tarball: Path | None
    extra_tree: Path | None
    format: str
    compression: str
    compression_level: int
    hostname: str | None


@dataclass(frozen=True)
class KernelConfig:
    cmdline: str
    image: str | None


@dataclass(frozen=True)
class TbootConfig:
    cmdline: str
    policy_type: str


@dataclass(frozen=True)
class Mode:
    name: str
    cmdline: str
    description: str
    keys: bool


@dataclass(frozen=True)
class Volume:
    name: str
    size: int
    filesystem: str
    modes: tuple[str, ...]
    content: Path | None
    mount: str | None
    recovery_passphrase: bool


@dataclass(frozen=True)
class Sealing:
    bank: Bank
    pcrs: tuple[int, ...]
    phase_pcr: int


@dataclass(frozen=True)
class Output:
    installer: bool
    compress_installer: bool
    event_log: bool


@dataclass(frozen=True)
class ImageDefinition:
    """The validated definition every stage takes; never a raw dict."""

    path: Path
    digest: str  # sha256 of the definition file's bytes
    name: str
    description: str
    base: BaseConfig
    kernel: KernelConfig
    tboot: TbootConfig
    modes: tuple[Mode, ...]
    integrity: str
    platform: Path
    volumes: tuple[Volume, ...]
    sealing: Sealing
    output: Output
    source_date_epoch: int

    def mode(self, name: str) -> Mode:
        for mode in self.modes:
            if mode.name == name:
                return mode
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able view (paths as strings) for caches and the manifest."""
        result: dict[str, Any] = _jsonable(asdict(self))
        return result


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_definition(path: Path) -> ImageDefinition:
    """Validate and type a definition file; any problem raises one InputError."""
    path = Path(path)
    node = load_yaml_node(path)
    raw = DEFINITION(Ctx(path.resolve()), node)
    data = path.read_bytes()
    b = raw["base"]
    return ImageDefinition(
        path=path.resolve(),
        digest=hashlib.sha256(data).hexdigest(),
        name=raw["name"],
        description=raw["description"],
        base=BaseConfig(**{**b, "packages": tuple(b["packages"])}),
        kernel=KernelConfig(**raw["kernel"]),
        tboot=TbootConfig(**raw["tboot"]),
        modes=tuple(Mode(**m) for m in raw["modes"]),
        integrity=raw["integrity"],
        platform=raw["platform"],
        volumes=tuple(Volume(**{**v, "modes": tuple(v["modes"])}) for v in raw["volumes"]),
        sealing=Sealing(
            Bank(raw["sealing"]["bank"]), tuple(raw["sealing"]["pcrs"]), raw["sealing"]["phase_pcr"]
        ),
        output=Output(**raw["output"]),
        source_date_epoch=raw["source_date_epoch"],
    )


def reference_markdown() -> str:
    """The reference of every field, generated from the table above."""
    lines = [
        "# Image definition reference",
        "",
        "Generated from `builder/config.py` by `actvsm schema --markdown`; do not edit by hand.",
        "Sizes are bytes, or a number with K, M, G or T (binary units). Paths are relative",
        "to the definition file. Unknown keys are errors.",
        "",
    ]
    sections: list[tuple[str, Section, str]] = [
        ("Top level", DEFINITION, ""),
        ("base", BASE, "base."),
        ("kernel", KERNEL, "kernel."),
        ("tboot", TBOOT, "tboot."),
        ("modes[]", MODE, "modes[]."),
        ("volumes[]", VOLUME, "volumes[]."),
        ("sealing", SEALING, "sealing."),
        ("output", OUTPUT, "output."),
    ]
    for title, section, prefix in sections:
        lines += [f"## {title}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        lines += markdown_table(section, prefix)
        lines.append("")
    return "\n".join(lines)
