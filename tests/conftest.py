"""Shared fixtures: a real swtpm per test (function scope keeps tests independent)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from builder.swtpm import Swtpm

# No deadlines: the suite runs on 2 shared cores beside QEMU guests, and how long an
# example takes is never what a test here asserts (benchmarks/ measures speed).
settings.register_profile(
    "actvsm", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("actvsm")


@pytest.fixture
def swtpm() -> Iterator[Swtpm]:
    with Swtpm() as tpm:
        yield tpm
