"""What the user sees: progress on stderr, results on stdout (text or JSON)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def canonical_json(obj: Any) -> str:
    """Sorted keys, two-space indent, trailing newline: stable across runs and machines."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


class Reporter:
    """Progress lines `[  12.3s 2/8] stage: message` on stderr; silent with quiet=True."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.start = time.monotonic()
        self.timings: dict[str, float] = {}
        self.step: tuple[int, int] | None = None  # (this stage, of how many)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def info(self, stage: str, message: str) -> None:
        if not self.quiet:
            where = f" {self.step[0]}/{self.step[1]}" if self.step else ""
            print(
                f"[{self.elapsed():7.1f}s{where}] {stage}: {message}", file=sys.stderr, flush=True
            )

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        t0 = time.monotonic()
        self.info(name, what)
        yield
        took = time.monotonic() - t0
        self.timings[name] = self.timings.get(name, 0.0) + took
        self.info(name, f"done in {took:.1f}s")


def emit(result: Any, text: str, *, as_json: bool) -> None:
    """Print a command's result: canonical JSON with --json, else the human text."""
    sys.stdout.write(
        canonical_json(result) if as_json else (text if text.endswith("\n") else text + "\n")
    )
    sys.stdout.flush()
