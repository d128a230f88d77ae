"""Errors meant for people: what went wrong, where, and how to fix it.

`InputError` is the user's to fix (exit status 2); `BuildError` is a failed step of
a build or check (exit status 1). The CLI prints them without a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


@dataclass
class Location:
    """Where in an input file a problem sits (line is 1-based)."""

    file: Path | str | None = None
    line: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(str(self.file) + (f":{self.line}" if self.line else ""))
        if self.field:
            parts.append(self.field)
        return ": ".join(parts)


class ActvsmError(Exception):
    """Base class; `exit_status` is what the CLI returns."""

    exit_status = EXIT_FAILED

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        location: Location | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.location = location

    def __str__(self) -> str:
        where = str(self.location) if self.location else ""
        return f"{where}: {self.message}" if where else self.message

    def to_json(self) -> dict[str, object]:
        loc = self.location or Location()
        return {
            "error": self.message,
            "kind": "input" if self.exit_status == EXIT_BAD_INPUT else "failed",
            "file": None if loc.file is None else str(loc.file),
            "line": loc.line,
            "field": loc.field,
            "hint": self.hint,
        }


class InputError(ActvsmError):
    """Bad input (definition, spec, log, argument): the user must change it."""

    exit_status = EXIT_BAD_INPUT


class BuildError(ActvsmError):
    """A build step or check failed."""

    exit_status = EXIT_FAILED


def input_error(
    message: str,
    *,
    file: Path | str | None = None,
    line: int | None = None,
    field: str | None = None,
    hint: str | None = None,
) -> InputError:
    return InputError(message, hint=hint, location=Location(file, line, field))
