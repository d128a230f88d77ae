from __future__ import annotations

import subprocess

from builder.swtpm import Swtpm, tools_env


def test_swtpm_answers_pcrread(swtpm: Swtpm) -> None:
    out = subprocess.run(
        ["tpm2_pcrread", "sha256:17"],
        env=tools_env(swtpm),
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    # A TPM before any late launch holds all-ones in PCR 17.
    assert "0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF" in out
