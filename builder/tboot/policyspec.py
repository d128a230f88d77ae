"""`actvsm policy create`'s YAML spec: what tb_polgen's --create and repeated --add say.

```yaml
type: nonfatal        # nonfatal | continue | halt
alg: sha256           # sha1 | sha256 | sha384 | sha512
control: 1            # 0 or 1 (bit 0: extend the policy hash into PCR 17); default 1
entries:
  - num: 0            # module number 0..127, or any (last)
    pcr: 18           # PCR 0..23, or none
    hash: image       # image | any
    hashes:           # one per tb_polgen --add of this module; none for hash: any
      - {cmdline: "root=/dev/sda1 ro", image: vmlinuz}
```
Image paths are relative to the spec file. Images are hashed as GRUB loads them
(gzip and xz decompressed; tb_polgen decompresses gzip only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from builder.banks import Bank
from builder.errors import InputError, input_error
from builder.tboot.modules import loaded_image
from builder.tboot.vlp import (
    CTRL_EXTEND_PCR17,
    MAX_MOD_NUM,
    MAX_PCR,
    MOD_ANY,
    PCR_NONE,
    TYPE_NAMES,
    AddOp,
    HashType,
    Policy,
    apply_adds,
)
from builder.tboot.yamlspec import LocDict, LocList, load_yaml

ALGS = {"sha1": Bank.SHA1, "sha256": Bank.SHA256, "sha384": Bank.SHA384, "sha512": Bank.SHA512}


def load_policy_spec(path: Path) -> Policy:
    """Read a spec file and compute the policy (hashing the images it names)."""
    return policy_from_spec(load_yaml(path), path)


def _line(obj: Any, key: str | int) -> int | None:
    if isinstance(obj, LocDict) and isinstance(key, str):
        return obj.line_of(key)
    if isinstance(obj, LocList) and isinstance(key, int):
        return obj.line_of(key)
    return getattr(obj, "line", None)


def _check_keys(obj: Any, allowed: set[str], where: str, path: Path) -> None:
    for key in obj:
        if key not in allowed:
            raise input_error(
                f"unknown field {key!r}",
                file=path,
                line=_line(obj, key),
                field=f"{where}{key}",
                hint=f"allowed fields: {', '.join(sorted(allowed))}",
            )


def policy_from_spec(spec: Any, path: Path) -> Policy:
    if not isinstance(spec, dict):
        raise input_error("a policy spec must be a mapping", file=path, line=1)
    _check_keys(spec, {"type", "alg", "control", "entries"}, "", path)

    def bad(msg: str, field: str, obj: Any, key: str | int, hint: str | None = None) -> InputError:
        return input_error(msg, file=path, line=_line(obj, key), field=field, hint=hint)

    ptype = spec.get("type")
    if not isinstance(ptype, str) or ptype not in TYPE_NAMES:
        raise bad(
            f"type must be one of {', '.join(TYPE_NAMES)}, not {ptype!r}", "type", spec, "type"
        )
    alg = spec.get("alg", "sha256")
    if not isinstance(alg, str) or alg not in ALGS:
        raise bad(f"alg must be one of {', '.join(ALGS)}, not {alg!r}", "alg", spec, "alg")
    control = spec.get("control", CTRL_EXTEND_PCR17)
    if isinstance(control, bool) or control not in (0, 1):
        raise bad(
            f"control must be 0 or 1, not {control!r}",
            "control",
            spec,
            "control",
            hint="bit 0 (1) extends the policy hash into PCR 17; tb_polgen allows no other bit",
        )
    entries = spec.get("entries", [])
    if not isinstance(entries, list):
        raise bad("entries must be a list", "entries", spec, "entries")
    adds: list[AddOp] = []
    seen: set[int] = set()
    for i, entry in enumerate(entries):
        where = f"entries[{i}]."
        if not isinstance(entry, dict):
            raise bad("each entry must be a mapping", f"entries[{i}]", entries, i)
        _check_keys(entry, {"num", "pcr", "hash", "hashes"}, where, path)
        num = entry.get("num")
        if num == "any":
            mod = MOD_ANY
        elif isinstance(num, int) and not isinstance(num, bool) and 0 <= num <= MAX_MOD_NUM:
            mod = num
        else:
            raise bad(
                f"num must be 0..{MAX_MOD_NUM} or any, not {num!r}", where + "num", entry, "num"
            )
        if mod in seen:
            raise bad(
                f"module {num} is listed twice",
                where + "num",
                entry,
                "num",
                hint="put all its hashes in one entry",
            )
        if MOD_ANY in seen:
            raise bad(
                "the 'any' entry must be the last one",
                where + "num",
                entry,
                "num",
                hint="tboot matches 'any' before any later entry",
            )
        seen.add(mod)
        pcr_v = entry.get("pcr")
        if pcr_v == "none":
            pcr = PCR_NONE
        elif isinstance(pcr_v, int) and not isinstance(pcr_v, bool) and 0 <= pcr_v <= MAX_PCR:
            pcr = pcr_v
        else:
            raise bad(
                f"pcr must be 0..{MAX_PCR} or none, not {pcr_v!r}", where + "pcr", entry, "pcr"
            )
        htype = entry.get("hash")
        if htype not in ("image", "any"):
            raise bad(f"hash must be image or any, not {htype!r}", where + "hash", entry, "hash")
        hashes = entry.get("hashes", [])
        if not isinstance(hashes, list):
            raise bad("hashes must be a list", where + "hashes", entry, "hashes")
        if htype == "any":
            if hashes:
                raise bad("hash: any takes no hashes", where + "hashes", entry, "hashes")
            adds.append(AddOp(mod, pcr, HashType.ANY))
            continue
        if not hashes:
            raise bad(
                "hash: image needs at least one entry in hashes",
                where + "hashes",
                entry,
                "hashes" if "hashes" in entry else "hash",
            )
        for j, h in enumerate(hashes):
            hw = f"{where}hashes[{j}]."
            if not isinstance(h, dict):
                raise bad("each hash must be a mapping {cmdline, image}", hw[:-1], hashes, j)
            _check_keys(h, {"cmdline", "image"}, hw, path)
            cmdline = h.get("cmdline", "")
            if not isinstance(cmdline, str):
                raise bad("cmdline must be a string", hw + "cmdline", h, "cmdline")
            if len(cmdline) > 1023:
                raise bad(
                    "cmdline longer than tb_polgen's 1023 characters", hw + "cmdline", h, "cmdline"
                )
            image = h.get("image")
            if not isinstance(image, str) or not image:
                raise bad("image must name a file", hw + "image", h, "image")
            ipath = (path.parent / image) if not Path(image).is_absolute() else Path(image)
            try:
                data = ipath.read_bytes()
            except OSError as exc:
                raise bad(
                    f"cannot read image {ipath}: {exc.strerror}", hw + "image", h, "image"
                ) from None
            loaded, _ = loaded_image(data, str(ipath))
            adds.append(AddOp(mod, pcr, HashType.IMAGE, cmdline, loaded))
    return apply_adds(TYPE_NAMES[ptype], ALGS[alg], control, adds)
