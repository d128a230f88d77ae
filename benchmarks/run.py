"""`make bench`: every benchmark in this directory, one after another, same machine."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path


def main() -> None:
    here = Path(__file__).parent
    for info in sorted(pkgutil.iter_modules([str(here)]), key=lambda m: m.name):
        if info.name in ("run", "__init__") or info.name.startswith("_"):
            continue
        print(f"== benchmarks.{info.name}")
        module = importlib.import_module(f"benchmarks.{info.name}")
        module.main()


if __name__ == "__main__":
    main()
