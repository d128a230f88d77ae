"""YAML loading that remembers line numbers, so errors can name file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from builder.errors import InputError, input_error


class LocDict(dict[str, Any]):
    """A mapping from YAML; `line_of(key)` is the 1-based line of that key."""

    line: int = 0
    lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.lines.get(key, self.line)


class LocList(list[Any]):
    """A sequence from YAML; `line_of(i)` is the 1-based line of item i."""

    line: int = 0
    lines: list[int]

    def line_of(self, i: int) -> int:
        return self.lines[i] if i < len(self.lines) else self.line


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LocDict:
    out = LocDict()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            key = str(key)
        if key in out:
            raise input_error(
                f"duplicate key {key!r}", line=key_node.start_mark.line + 1, field=key
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> LocList:
    out = LocList(loader.construct_object(item, deep=True) for item in node.value)
    out.line = node.start_mark.line + 1
    out.lines = [item.start_mark.line + 1 for item in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def load_yaml(path: Path) -> Any:
    """Parse `path`; syntax errors and unreadable files become InputError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise input_error(f"cannot read: {exc.strerror}", file=path) from None
    except UnicodeDecodeError:
        raise input_error("not UTF-8 text", file=path) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except InputError as err:
        if err.location is not None:
            err.location.file = path
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise input_error(f"invalid YAML: {problem}", file=path, line=line) from None
