"""Seal and unseal latency against clevis' tpm2 pin, on the same swtpm, in the same run.

    .venv/bin/python -m benchmarks.seal [--rounds N]

Rows (median of N rounds, milliseconds) and the ratio ours / clevis:
- seal: TPM2_Create of the sealed object via tpm2-pytss (in process, SRK created as
  needed like clevis does) vs `clevis encrypt tpm2` (tpm2-tools + JWE);
- unseal: load + PolicyPCR (+ PolicyOR) + Unseal in process vs `clevis decrypt`;
- actvsm unseal: the whole CLI process (Python start, token, TPM, cryptsetup check);
- unseal.sh: the initramfs script (tpm2-tools, token read from the LUKS2 header) vs
  `clevis decrypt`.
Both sides bind to PCR 11 in the sha256 bank; one extra row uses our default policy
(PCR 11, 17, 18, 19, two modes OR-ed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from builder.seal import (
    LocalTpm,
    PolicySpec,
    SealedBlob,
    VolumeSpec,
    build_policy,
    make_volume,
    unseal_volume,
)
from builder.seal.script import unseal_script
from builder.seal.srk import SrkAlg
from builder.seal.tpm import open_tpm, read_pcrs, storage_parent, unseal_here
from builder.swtpm import Swtpm, tools_env

CLEVIS_CONFIG = '{"pcr_bank":"sha256","pcr_ids":"11"}'


def median_ms(
    fn: Callable[[], object], rounds: int, after: Callable[[], object] = lambda: None
) -> float:
    """Median wall time of `fn`; `after` runs untimed after each call."""
    fn()  # warm-up (imports, TCTI loading)
    after()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        after()
    return 1000 * statistics.median(times)


def run_checked(cmd: list[str | Path], env: dict[str, str], data: bytes = b"") -> bytes:
    proc = subprocess.run(cmd, input=data, env=env, capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr.decode()[-500:]}")
    return proc.stdout


def measure(tpm: Swtpm, work: Path, rounds: int) -> list[tuple[str, float, float]]:
    env = tools_env(tpm)
    secret = os.urandom(32)
    with open_tpm(tpm.tcti) as ctx:
        now = read_pcrs(ctx, "sha256:11,17,18,19")
    pcr11 = PolicySpec((11,))
    policy = build_policy({"normal": now}, ["normal"], pcr11)
    two = build_policy({"normal": now, "admin": {**now, 18: bytes(32)}}, ["admin", "normal"],
                       PolicySpec())  # fmt: skip
    sealer = LocalTpm(tpm.tcti)
    (blob,) = sealer.seal(secret, policy.digest)
    (blob2,) = sealer.seal(secret, two.digest)
    volume = make_volume(VolumeSpec("bench", 32 << 20, ("normal",)), {"normal": now}, sealer,
                         work, policy=pcr11).path  # fmt: skip
    script = work / "unseal.sh"
    script.write_text(unseal_script())
    script.chmod(0o755)

    def ours_unseal(
        b: SealedBlob, selection: str, branches: tuple[bytes, ...]
    ) -> Callable[[], bytes]:
        def go() -> bytes:
            with open_tpm(tpm.tcti) as ctx, storage_parent(ctx, SrkAlg.ECC) as parent:
                return unseal_here(ctx, parent, b.public, b.private, selection, branches)

        return go

    def flush_sessions() -> None:
        # clevis expects a resource manager; on a bare swtpm it leaves a session loaded
        run_checked(["tpm2_flushcontext", "--loaded-session"], env)

    def clevis_encrypt() -> bytes:
        return run_checked(["clevis", "encrypt", "tpm2", CLEVIS_CONFIG], env, secret)

    def clevis_decrypt() -> bytes:
        return run_checked(["clevis", "decrypt"], env, jwe)

    jwe = clevis_encrypt()
    flush_sessions()
    script_env = {**env, "TMPDIR": str(work)}
    assert ours_unseal(blob, pcr11.selection, ())() == secret
    assert clevis_decrypt() == secret
    assert run_checked([script, volume], script_env) == unseal_volume(volume, tpm.tcti).secret
    clevis_dec = median_ms(clevis_decrypt, rounds, flush_sessions)
    return [
        ("seal", median_ms(lambda: sealer.seal(secret, policy.digest), rounds),
         median_ms(clevis_encrypt, rounds, flush_sessions)),
        ("unseal (in process)", median_ms(ours_unseal(blob, pcr11.selection, ()), rounds),
         clevis_dec),
        ("unseal, 4 PCRs + PolicyOR",
         median_ms(ours_unseal(blob2, PolicySpec().selection, two.or_branches), rounds),
         clevis_dec),
        ("actvsm unseal (CLI process)",
         median_ms(lambda: run_checked([sys.executable, "-m", "builder.cli", "unseal", volume,
                                        "--tpm", tpm.tcti], env), rounds), clevis_dec),
        ("unseal.sh (tpm2-tools)",
         median_ms(lambda: run_checked([script, volume], script_env), rounds), clevis_dec),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    with Swtpm() as tpm, tempfile.TemporaryDirectory(prefix="actvsm-bench-") as d:
        rows = measure(tpm, Path(d), args.rounds)
    print(f"{'operation':28} {'actvsm ms':>10} {'clevis ms':>10} {'ratio':>7}")
    for name, ours, theirs in rows:
        print(f"{name:28} {ours:10.1f} {theirs:10.1f} {ours / theirs:7.2f}")
    print("ratio = actvsm / clevis tpm2 pin (lower is faster); same swtpm, same run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
