"""Writing command outputs atomically, with unwritable paths reported as InputError."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from builder.errors import input_error


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory and a rename."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}-")
    except OSError as exc:
        raise input_error(
            f"cannot write: {exc.strerror}", file=path, hint="check the output directory"
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise input_error(f"cannot write: {exc.strerror}", file=path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
