"""Re-derive a manifest from the artifacts on disk and compare it with the one written.

What boots is what the GRUB configuration on disk says, so the command lines come from
there, the files from the output directory, and the platform from the profile copied
beside them; the manifest's own claims are only what we compare against.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import predict
from builder.banks import ALL_BANKS, Bank
from builder.digest import file_digests
from builder.errors import BuildError, InputError, input_error
from builder.fsimage import verity_verify
from builder.manifest import load_manifest
from builder.manifest_diff import short
from builder.platform import load_platform
from builder.seal import PolicySpec, build_policy
from builder.seal.unseal import volume_tokens
from builder.tboot.grub import parse_grub_config


@dataclass
class VerifyReport:
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "checked": self.checked}


def grub_entries(text: str) -> dict[str, dict[str, str]]:
    """mode -> {"tboot_cmdline", "kernel_cmdline", "initrd_cmdline"} from a generated
    grub.cfg (the measured command lines, as GRUB passes them)."""
    try:
        parsed = parse_grub_config(text)
    except ValueError as exc:
        raise InputError(f"not a GRUB configuration actvsm wrote: {exc}") from None
    return {
        mode: {
            "tboot_cmdline": e.tboot_cmdline,
            "kernel_cmdline": e.kernel_cmdline,
            "initrd_cmdline": e.initrd_cmdline,
        }
        for mode, e in parsed.items()
    }


def _check_artifacts(out: Path, manifest: dict[str, Any], report: VerifyReport) -> None:
    listed = manifest.get("artifacts", {})
    on_disk = {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    for name in sorted(set(listed) - on_disk):
        report.problems.append(f"artifact {name}: listed in the manifest but missing")
    for name in sorted(on_disk - set(listed)):
        report.problems.append(f"artifact {name}: on disk but not in the manifest")
    for name in sorted(set(listed) & on_disk):
        size, digests = file_digests(out / name, ALL_BANKS)
        want = listed[name]
        if size != want.get("size"):
            report.problems.append(
                f"artifact {name}: size {size}, manifest says {want.get('size')}"
            )
        for bank, digest in digests.items():
            recorded = want.get("digests", {}).get(bank.value)
            if recorded != digest.hex():
                report.problems.append(
                    f"artifact {name}: {bank} {short(digest.hex())}, "
                    f"manifest says {short(str(recorded))}"
                )
                break
    report.checked.append(f"{len(listed)} artifacts' sizes and digests")


def _check_verity(out: Path, manifest: dict[str, Any], report: VerifyReport) -> None:
    verity = manifest.get("verity")
    if verity is None:
        return
    image = out / f"base.{'erofs' if (out / 'base.erofs').exists() else 'squashfs'}"
    if not verity_verify(image, out / "base.verity", verity["root_hash"]):
        report.problems.append(
            f"verity: veritysetup rejects {image.name} with root hash {short(verity['root_hash'])}"
        )
    report.checked.append("the base image against its verity tree and root hash")


def _compare_events(
    mode: str, got: list[dict[str, Any]], want: list[dict[str, Any]], report: VerifyReport
) -> None:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            report.problems.append(
                f"mode {mode}: event {i} ({a['description']}) re-derived as PCR {a['pcr']} "
                f"{_digest_summary(a)}, manifest says PCR {b['pcr']} {_digest_summary(b)}"
            )
            return
    if len(got) != len(want):
        report.problems.append(
            f"mode {mode}: {len(got)} events re-derived, manifest lists {len(want)}"
        )


def _digest_summary(event: dict[str, Any]) -> str:
    return ", ".join(f"{k} {short(v)}" for k, v in sorted(event.get("digests", {}).items()))


Values = dict[str, dict[Bank, dict[int, bytes]]]


def _check_predictions(out: Path, manifest: dict[str, Any], report: VerifyReport) -> Values:
    """Re-derive every mode's events and PCRs; returns the re-derived values per mode."""
    derived: Values = {}
    modes = manifest.get("modes")
    if not modes:
        return derived
    platform = load_platform(out / "platform.yaml")
    kernel = (out / "boot" / predict.KERNEL_NAME).read_bytes()
    initrd = (out / "boot" / predict.INITRD_NAME).read_bytes()
    tboot = (out / "boot" / predict.TBOOT_NAME).read_bytes()
    policy = (out / "launch" / "vl.pol").read_bytes()
    for firmware in ("bios", "uefi"):
        cfg = out / "boot" / "grub" / f"grub-{firmware}.cfg"
        try:
            entries = grub_entries(cfg.read_text())
        except InputError as exc:
            report.problems.append(f"grub-{firmware}.cfg: {exc.message}")
            return derived
        if set(entries) != set(modes):
            report.problems.append(
                f"grub-{firmware}.cfg: boot entries {sorted(entries)}, "
                f"but the manifest has modes {sorted(modes)}"
            )
        if firmware == "bios":
            bios_entries = entries
        elif entries != bios_entries:
            report.problems.append("grub-uefi.cfg and grub-bios.cfg boot different command lines")
    # GRUB's order is the definition's order, which the policy's hash lists follow.
    inputs = [
        predict.ModeInput(m, entry["kernel_cmdline"], bool(modes[m].get("keys", True)))
        for m, entry in bios_entries.items()
        if m in modes
    ]
    expected_policy = predict.make_policy(
        kernel, initrd, inputs, str(manifest.get("launch", {}).get("policy_type", "halt")), platform
    )
    if expected_policy != policy:
        report.problems.append(
            "launch/vl.pol is not the policy for the kernel, initrd and command lines on disk"
        )
    sealed = sorted(
        {int(p) for vol in manifest.get("volumes", {}).values() for p in vol.get("pcrs", [])}
    )
    tboot_cmds = {m.name: bios_entries[m.name].get("tboot_cmdline", "") for m in inputs}
    if len(set(tboot_cmds.values())) > 1:
        report.problems.append("the GRUB entries give tboot different command lines")
    tboot_cmd = next(iter(tboot_cmds.values()), "")
    try:
        predicted = predict.predict_modes(
            platform,
            tboot=tboot,
            tboot_cmd=tboot_cmd,
            kernel=kernel,
            initrd=initrd,
            modes=inputs,
            policy=policy,
        )
    except (BuildError, InputError) as exc:
        # What tboot itself would refuse (a module not in the policy, limits): no boot.
        report.problems.append(f"the files on disk would not launch: {exc}")
        return derived
    for mode in inputs:
        events = predicted[mode.name]
        values = predict.pcr_values(events, platform.banks, sealed)
        derived[mode.name] = values
        recorded = modes[mode.name]
        if mode.kernel_cmdline != recorded.get("kernel_cmdline"):
            report.problems.append(
                f"mode {mode.name}: GRUB boots the kernel with {mode.kernel_cmdline!r}, "
                f"manifest says {recorded.get('kernel_cmdline')!r}"
            )
        _compare_events(
            mode.name, [e.to_json() for e in events], recorded.get("events", []), report
        )
        got = predict.pcrs_json(values)
        for bank, pcrs in got.items():
            for pcr, value in pcrs.items():
                want = recorded.get("pcrs", {}).get(bank, {}).get(pcr)
                if value != want:
                    report.problems.append(
                        f"mode {mode.name}: PCR {pcr} ({bank}) re-derived as {short(value)}, "
                        f"manifest says {short(str(want))}"
                    )
    report.checked.append(f"launch policy, events and PCRs of {len(inputs)} modes")
    return derived


def _check_volumes(
    out: Path, manifest: dict[str, Any], derived: Values, report: VerifyReport
) -> None:
    """Each volume's tokens and sealed objects carry the policy of its modes' re-derived PCRs."""
    volumes = manifest.get("volumes", {})
    for name, vol in sorted(volumes.items()):
        bank = Bank(vol["bank"])
        try:
            values = {m: {p: derived[m][bank][p] for p in vol["pcrs"]} for m in vol["modes"]}
        except KeyError as exc:
            report.problems.append(f"volume {name}: no re-derived value for {exc}")
            continue
        policy = build_policy(values, vol["modes"], PolicySpec(tuple(vol["pcrs"]), bank)).digest
        if policy.hex() != vol.get("policy"):
            report.problems.append(
                f"volume {name}: policy re-derived as {short(policy.hex())}, "
                f"manifest says {short(str(vol.get('policy')))}"
            )
        path = out / vol.get("artifact", f"volumes/{name}.luks")
        try:
            tokens = volume_tokens(path)
        except (BuildError, InputError) as exc:
            report.problems.append(f"volume {name}: cannot read its tokens: {exc}")
            continue
        for tok in tokens:
            sealed = sealed_auth_policy(tok.public)
            if tok.policy_hash != policy or sealed != policy:
                report.problems.append(
                    f"volume {name}: token {tok.token_id} seals to {short(sealed.hex())} "
                    f"(token says {short(tok.policy_hash.hex())}), expected {short(policy.hex())}"
                )
    if volumes:
        report.checked.append(f"sealed policies of {len(volumes)} volume(s) in their LUKS headers")


def sealed_auth_policy(public: bytes) -> bytes:
    """The authPolicy inside a sealed object's TPM2B_PUBLIC: what the TPM will enforce."""
    from tpm2_pytss.types import TPM2B_PUBLIC

    area, _ = TPM2B_PUBLIC.unmarshal(public)
    return bytes(area.publicArea.authPolicy)


def verify_output(path: Path, extra_checks: Iterable[Any] = ()) -> VerifyReport:
    out = path.parent if path.is_file() else path
    if not (out / "manifest.json").is_file():
        raise input_error("no manifest.json here", file=out, hint="give a build's OUTDIR/<name>")
    manifest = load_manifest(out / "manifest.json")
    report = VerifyReport()
    _check_artifacts(out, manifest, report)
    _check_verity(out, manifest, report)
    derived = _check_predictions(out, manifest, report)
    _check_volumes(out, manifest, derived, report)
    for check in extra_checks:
        check(out, manifest, report)
    return report
