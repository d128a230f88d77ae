"""A small declarative schema over PyYAML's node tree, so that every error names
the file, the line and the dotted field, and the same table writes the reference docs.

We walk `yaml.compose()` nodes instead of `yaml.safe_load()` output because plain
dicts lose line numbers and silently keep the last of two duplicate keys.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builder.errors import InputError, input_error

Parser = Callable[["Ctx", yaml.Node], Any]


@dataclass(frozen=True)
class Ctx:
    """Where we are while validating: the file, its directory, and the dotted field."""

    file: Path
    path: str = ""

    @property
    def base_dir(self) -> Path:
        return self.file.parent

    def child(self, name: str | int) -> Ctx:
        if isinstance(name, int):
            return Ctx(self.file, f"{self.path}[{name}]")
        return Ctx(self.file, f"{self.path}.{name}" if self.path else name)

    def error(self, node: yaml.Node | None, message: str, hint: str | None = None) -> InputError:
        line = node.start_mark.line + 1 if node is not None else None
        return input_error(message, file=self.file, line=line, field=self.path or None, hint=hint)


@dataclass(frozen=True)
class Field:
    """One setting: its key, how to parse it, and what the docs say about it."""

    key: str
    parse: Parser
    help: str
    required: bool = False
    default: Any = None
    type_doc: str = ""


@dataclass(frozen=True)
class Section:
    """A mapping with a fixed set of keys; unknown keys are errors."""

    name: str
    fields: Sequence[Field]
    help: str = ""
    extra_check: Callable[[Ctx, yaml.MappingNode, dict[str, Any]], None] | None = field(
        default=None, compare=False
    )

    def __call__(self, ctx: Ctx, node: yaml.Node) -> dict[str, Any]:
        pairs = mapping_pairs(ctx, node)
        known = {f.key: f for f in self.fields}
        out: dict[str, Any] = {}
        for key, (key_node, value_node) in pairs.items():
            if key not in known:
                close = _closest(key, list(known))
                hint = f"did you mean '{close}'?" if close else f"known keys: {', '.join(known)}"
                raise ctx.child(key).error(key_node, f"unknown key '{key}'", hint)
            out[key] = known[key].parse(ctx.child(key), value_node)
        for f in self.fields:
            if f.key not in out:
                if f.required:
                    raise ctx.error(
                        node, f"missing required key '{f.key}'", f"add '{f.key}:' ({f.help})"
                    )
                out[f.key] = f.default() if callable(f.default) else f.default
        if self.extra_check is not None:
            assert isinstance(node, yaml.MappingNode)
            self.extra_check(ctx, node, out)
        return out


def mapping_pairs(ctx: Ctx, node: yaml.Node) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.error(node, f"expected a mapping, got {_kind(node)}")
    pairs: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise ctx.error(key_node, "keys must be plain strings")
        key = str(key_node.value)
        if key in pairs:
            first = pairs[key][0].start_mark.line + 1
            raise ctx.child(key).error(key_node, f"duplicate key '{key}' (first on line {first})")
        pairs[key] = (key_node, value_node)
    return pairs


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    tag = node.tag.rsplit(":", 1)[-1]
    return {
        "str": "a string",
        "int": "an integer",
        "bool": "a boolean",
        "null": "nothing",
        "float": "a number",
    }.get(tag, f"a {tag}") + f" ({node.value!r})"


def _closest(word: str, choices: Sequence[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return found[0] if found else None


def _scalar(ctx: Ctx, node: yaml.Node, tag: str, what: str) -> Any:
    if not isinstance(node, yaml.ScalarNode) or node.tag != f"tag:yaml.org,2002:{tag}":
        raise ctx.error(node, f"expected {what}, got {_kind(node)}")
    return yaml.safe_load(yaml.serialize(node))


def string(pattern: str | None = None, *, hint: str | None = None, max_len: int = 4096) -> Parser:
    def parse(ctx: Ctx, node: yaml.Node) -> str:
        value = _scalar(ctx, node, "str", "a string")
        assert isinstance(value, str)
        if len(value) > max_len:
            raise ctx.error(node, f"longer than {max_len} characters")
        if pattern is not None and not re.fullmatch(pattern, value):
            raise ctx.error(node, f"invalid value {value!r}", hint)
        return value

    return parse


def integer(minimum: int | None = None, maximum: int | None = None) -> Parser:
    def parse(ctx: Ctx, node: yaml.Node) -> int:
        value = _scalar(ctx, node, "int", "an integer")
        assert isinstance(value, int)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ctx.error(node, f"{value} is out of range {minimum}..{maximum}")
        return value

    return parse


def boolean(ctx: Ctx, node: yaml.Node) -> bool:
    value = _scalar(ctx, node, "bool", "true or false")
    assert isinstance(value, bool)
    return value


def choice(*choices: str) -> Parser:
    def parse(ctx: Ctx, node: yaml.Node) -> str:
        value: str = string()(ctx, node)
        if value not in choices:
            raise ctx.error(node, f"invalid value {value!r}", f"use one of: {', '.join(choices)}")
        return value

    return parse


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size(minimum: int = 0, maximum: int = 1 << 44, align: int = 1) -> Parser:
    """Bytes, given as an integer or as '64M', '1G', '512K' (binary units, optional 'iB')."""

    def parse(ctx: Ctx, node: yaml.Node) -> int:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":int"):
            value = int(_scalar(ctx, node, "int", "a size"))
        else:
            text = string()(ctx, node)
            m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
            if m is None:
                raise ctx.error(node, f"invalid size {text!r}", "write e.g. 64M, 1G or 1048576")
            value = int(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]
        if value < minimum or value > maximum:
            raise ctx.error(node, f"size {value} bytes is out of range {minimum}..{maximum}")
        if value % align:
            raise ctx.error(node, f"size {value} is not a multiple of {align} bytes")
        return value

    return parse


def list_of(
    item: Parser, *, unique: bool = False, min_items: int = 0, max_items: int = 1000
) -> Parser:
    def parse(ctx: Ctx, node: yaml.Node) -> list[Any]:
        if not isinstance(node, yaml.SequenceNode):
            raise ctx.error(node, f"expected a list, got {_kind(node)}")
        if not min_items <= len(node.value) <= max_items:
            raise ctx.error(node, f"expected {min_items}..{max_items} items, got {len(node.value)}")
        out = []
        for i, child in enumerate(node.value):
            value = item(ctx.child(i), child)
            if unique and value in out:
                raise ctx.child(i).error(child, f"duplicate entry {value!r}")
            out.append(value)
        return out

    return parse


def existing_path(kind: str) -> Parser:
    """A path relative to the definition's directory that must exist (file or dir)."""

    def parse(ctx: Ctx, node: yaml.Node) -> Path:
        text: str = string()(ctx, node)
        path = (ctx.base_dir / text).resolve()
        if kind == "dir" and not path.is_dir():
            raise ctx.error(node, f"directory {text!r} does not exist (looked in {path})")
        if kind == "file" and not path.is_file():
            raise ctx.error(node, f"file {text!r} does not exist (looked in {path})")
        return path

    return parse


def load_yaml_node(path: Path) -> yaml.Node:
    """Compose a YAML file into nodes; syntax errors become InputErrors with a line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise input_error("file does not exist", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise input_error(f"cannot read: {exc}", file=path) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise input_error(f"YAML syntax error: {exc.problem}", file=path, line=line) from None
    except yaml.YAMLError as exc:
        raise input_error(f"YAML error: {exc}", file=path) from None
    if node is None:
        raise input_error("the file is empty", file=path, hint="see images/default.yaml")
    return node


def markdown_table(section: Section, prefix: str = "") -> list[str]:
    """Reference rows for the docs: key, type, default, meaning."""
    rows = []
    for f in section.fields:
        default = "required" if f.required else ("" if f.default is None else repr(f.default))
        if callable(f.default):
            default = repr(f.default())
        rows.append(f"| `{prefix}{f.key}` | {f.type_doc} | {default} | {f.help} |")
    return rows
