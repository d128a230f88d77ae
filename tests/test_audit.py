"""The auditor's commands on real builds of the small image: diff explains each kind of
change, verify re-derives the manifest from the artifacts, manifest show reads it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from builder import paths
from tests.buildkit import actvsm, small_definition


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small tree and one cache shared by this module's builds (each its own output)."""
    work = tmp_path_factory.mktemp("audit")
    defn = small_definition(work)
    defn.write_text(defn.read_text() + "output:\n  installer: false\n")  # not what we audit here
    return work


def build(work: Path, name: str, edit: Callable[[str], str] = lambda t: t) -> Path:
    defn = work / f"{name}.yaml"
    defn.write_text(edit((work / "small.yaml").read_text()))
    out = work / f"out-{name}"
    proc = actvsm("build", "-q", str(defn), "-o", str(out), "--cache-dir", str(work / "cache"))
    assert proc.returncode == 0, proc.stderr
    return out / "small"


def diff(a: Path, b: Path) -> tuple[int, dict[str, Any]]:
    proc = actvsm("diff", "--json", str(a), str(b))
    assert proc.returncode in (0, 1), proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return proc.returncode, result


def changed_pcrs(result: dict[str, Any], bank: str = "sha256") -> set[tuple[str, int]]:
    return {(c["mode"], c["pcr"]) for c in result["pcrs"] if c["bank"] == bank}


@pytest.fixture(scope="module")
def reference(workspace: Path) -> Path:
    return build(workspace, "reference")


def test_manifest_matches_its_schema(reference: Path) -> None:
    schema = json.loads((paths.ROOT / "docs" / "manifest.schema.json").read_text())
    jsonschema.validate(json.loads((reference / "manifest.json").read_text()), schema)


def test_manifest_is_canonical_json(reference: Path) -> None:
    text = (reference / "manifest.json").read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"


def test_identical_builds_diff_equal(workspace: Path, reference: Path) -> None:
    again = build(workspace, "again")
    status, result = diff(reference, again)
    assert status == 0 and result["equal"] is True
    proc = actvsm("diff", str(reference), str(again))
    assert proc.stdout.strip() == "manifests are equal"


def test_diff_command_line_of_one_mode(workspace: Path, reference: Path) -> None:
    other = build(
        workspace,
        "cmdline",
        lambda t: t.replace("  - name: normal\n", "  - name: normal\n    cmdline: quiet\n"),
    )
    status, result = diff(reference, other)
    assert status == 1
    # Mode normal's kernel measurement changes (PCR 17 under the DA mapping); the one
    # launch policy lists every mode's hash, so PCR 17/18 change in every mode through it.
    assert changed_pcrs(result) == {(m, p) for m in ("normal", "admin", "update") for p in (17, 18)}
    for change in result["pcrs"]:
        assert any("kernel_cmdline.normal: added quiet" in r for r in change["reasons"]), change
    normal17 = next(
        c for c in result["pcrs"] if (c["mode"], c["pcr"], c["bank"]) == ("normal", 17, "sha256")
    )
    assert any(
        "module 0 (kernel)" in r and "cmdline: added quiet" in r for r in normal17["reasons"]
    )
    assert "data" in normal17["broken_volumes"]
    text = actvsm("diff", str(reference), str(other)).stdout
    assert "mode normal, PCR 17 (sha256):" in text and "cmdline: added quiet" in text


def test_diff_launch_policy_type(workspace: Path, reference: Path) -> None:
    other = build(workspace, "policy", lambda t: t + "tboot:\n  policy_type: nonfatal\n")
    status, result = diff(reference, other)
    assert status == 1
    assert changed_pcrs(result) == {(m, p) for m in ("normal", "admin", "update") for p in (17, 18)}
    for change in result["pcrs"]:
        assert any("policy_type: halt -> nonfatal" in r for r in change["reasons"]), change


def test_diff_base_image(workspace: Path, reference: Path) -> None:
    tree = workspace / "tree-base"
    shutil.copytree(workspace / "small-tree", tree, symlinks=True)
    (tree / "etc" / "motd").write_text("changed base\n")
    other = build(workspace, "base", lambda t: t.replace("tree: small-tree", "tree: tree-base"))
    status, result = diff(reference, other)
    assert status == 1
    old = json.loads((reference / "manifest.json").read_text())["verity"]["root_hash"]
    new = json.loads((other / "manifest.json").read_text())["verity"]["root_hash"]
    normal17 = next(
        c for c in result["pcrs"] if (c["mode"], c["pcr"], c["bank"]) == ("normal", 17, "sha256")
    )
    assert any(f"actvsm.roothash {old[:12]}.. -> {new[:12]}.." in r for r in normal17["reasons"])
    assert any(line.startswith("artifact base.squashfs changed") for line in result["other"])


def test_diff_kernel(workspace: Path, reference: Path) -> None:
    tree = workspace / "tree-kernel"
    shutil.copytree(workspace / "small-tree", tree, symlinks=True)
    kernel = next((tree / "boot").glob("vmlinuz-*"))
    kernel.write_bytes(kernel.read_bytes() + b"\0" * 512)  # still a bzImage, other bytes
    other = build(workspace, "kernel", lambda t: t.replace("tree: small-tree", "tree: tree-kernel"))
    status, result = diff(reference, other)
    assert status == 1
    normal17 = next(
        c for c in result["pcrs"] if (c["mode"], c["pcr"], c["bank"]) == ("normal", 17, "sha256")
    )
    assert any("module 0 (kernel)" in r and "image_sha256" in r for r in normal17["reasons"])
    assert ("normal", 19) not in changed_pcrs(result) or True  # the initrd did not change...
    assert not any(c["pcr"] == 19 for c in result["pcrs"]), (
        "only the kernel changed, not the initrd"
    )


def test_diff_initrd(workspace: Path, reference: Path) -> None:
    tree = workspace / "tree-initrd"
    shutil.copytree(workspace / "small-tree", tree, symlinks=True)
    busybox = tree / "bin" / "busybox"
    busybox.write_bytes(busybox.read_bytes() + b"\0")  # the initramfs copies busybox
    other = build(workspace, "initrd", lambda t: t.replace("tree: small-tree", "tree: tree-initrd"))
    status, result = diff(reference, other)
    assert status == 1
    normal19 = next(
        c for c in result["pcrs"] if (c["mode"], c["pcr"], c["bank"]) == ("normal", 19, "sha256")
    )
    assert any("module 1 (initrd)" in r and "image_sha256" in r for r in normal19["reasons"])


def test_diff_platform_profile(workspace: Path, reference: Path) -> None:
    profile = (paths.PLATFORMS / "qemu-swtpm.yaml").read_text()
    (workspace / "other-platform.yaml").write_text(
        profile.replace('"qemu-swtpm NV_INFO"', '"qemu-swtpm NV_INFO, other firmware"')
    )
    other = build(
        workspace,
        "platform",
        lambda t: t.replace("platform: qemu-swtpm", "platform: other-platform.yaml"),
    )
    status, result = diff(reference, other)
    assert status == 1
    assert {p for _, p in changed_pcrs(result)} == {17, 18}
    assert any(r.startswith("platform profile changed") for r in result["other"])
    reasons = [r for c in result["pcrs"] for r in c["reasons"]]
    assert any("NV_INFO" in r and "data_sha256" in r for r in reasons)


def test_diff_bad_input_exit_2(tmp_path: Path, reference: Path) -> None:
    (tmp_path / "x.json").write_text("{not json")
    proc = actvsm("diff", str(reference), str(tmp_path / "x.json"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = actvsm("diff", str(reference), str(tmp_path / "missing"))
    assert proc.returncode == 2


def test_verify_accepts_untouched_output(reference: Path) -> None:
    proc = actvsm("verify", "--json", str(reference))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["ok"] is True


def test_verify_reports_hand_edited_manifest(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "small"
    shutil.copytree(reference, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["modes"]["admin"]["pcrs"]["sha256"]["19"] = "00" * 32
    (out / "manifest.json").write_text(json.dumps(manifest))
    proc = actvsm("verify", str(out))
    assert proc.returncode == 1
    assert "mode admin: PCR 19 (sha256) re-derived as" in proc.stdout


def test_verify_reports_swapped_kernel(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "small"
    shutil.copytree(reference, out)
    kernel = out / "boot" / "vmlinuz"
    kernel.write_bytes(kernel.read_bytes() + b"\0" * 16)
    proc = actvsm("verify", str(out))
    assert proc.returncode == 1
    assert "artifact boot/vmlinuz: size" in proc.stdout
    assert "launch/vl.pol is not the policy" in proc.stdout
    assert "would not launch" in proc.stdout and "not in the policy" in proc.stdout


def test_verify_reports_tampered_base(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "small"
    shutil.copytree(reference, out)
    image = out / "base.squashfs"
    data = bytearray(image.read_bytes())
    data[4096] ^= 0xFF
    image.write_bytes(bytes(data))
    proc = actvsm("verify", str(out))
    assert proc.returncode == 1
    assert "verity: veritysetup rejects base.squashfs" in proc.stdout


def test_verify_bad_input_exit_2(tmp_path: Path) -> None:
    proc = actvsm("verify", str(tmp_path))
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr


def test_manifest_show(reference: Path) -> None:
    proc = actvsm("manifest", "show", str(reference), "--mode", "normal", "--bank", "sha256")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((reference / "manifest.json").read_text())
    value = manifest["modes"]["normal"]["pcrs"]["sha256"]["17"]
    assert f"sha256 PCR 17 = {value}" in proc.stdout
    assert "module 0 (kernel) vmlinuz" in proc.stdout
    assert "mode admin" not in proc.stdout
    proc = actvsm("manifest", "show", "--json", str(reference))
    assert json.loads(proc.stdout) == manifest


def test_exported_event_log_replays_to_the_prediction(reference: Path) -> None:
    manifest = json.loads((reference / "manifest.json").read_text())
    for mode in manifest["modes"]:
        proc = actvsm("replay", "--json", str(reference / "events" / f"{mode}.cel.json"),
                      "--manifest", str(reference), "--mode", mode)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        after = manifest["modes"][mode]["phase_cap"]["pcrs_after"]["sha256"]["11"]
        assert json.loads(proc.stdout)["pcrs"]["sha256"]["11"] == after
    # Mode admin's log against mode normal's prediction: the kernel command line differs.
    proc = actvsm("replay", str(reference / "events/admin.cel.json"), "--manifest", str(reference),
                  "--mode", "normal")  # fmt: skip
    assert proc.returncode == 1
    assert "first divergence: PCR 17" in proc.stdout and "module 0 (kernel)" in proc.stdout
