"""Shared fixtures: a real swtpm per test (function scope keeps tests independent)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from builder.swtpm import Swtpm


@pytest.fixture
def swtpm() -> Iterator[Swtpm]:
    with Swtpm() as tpm:
        yield tpm
