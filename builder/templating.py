"""jinja2 rendering of the project's templates: strict (undefined is an error)."""

from __future__ import annotations

from typing import Any

import jinja2

from builder import paths

_ENV: jinja2.Environment | None = None


def environment() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        _ENV = jinja2.Environment(
            loader=jinja2.FileSystemLoader([str(paths.TEMPLATES), str(paths.INITRAMFS)]),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,
        )
    return _ENV


def render(name: str, **context: Any) -> str:
    return environment().get_template(name).render(**context)
