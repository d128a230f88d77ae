"""Strict loading of image definitions: every malformed definition gets one error naming
file, line and field, exit status 2, and nothing is written."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from builder import paths
from builder.config import load_definition, reference_markdown
from builder.errors import InputError

GOOD = """\
name: good
base:
  tree: tree
kernel:
  cmdline: console=ttyS0
modes:
  - name: normal
  - name: admin
  - name: update
platform: plat.yaml
volumes:
  - name: data
    size: 64M
    modes: [normal, admin]
"""


def write_def(tmp_path: Path, text: str) -> Path:
    (tmp_path / "tree").mkdir(exist_ok=True)
    (tmp_path / "content").mkdir(exist_ok=True)
    (tmp_path / "plat.yaml").write_text("name: plat\n")
    (tmp_path / "base.tar").write_bytes(b"")
    path = tmp_path / "def.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def replace(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


# (id, definition text, expected field (dotted), expected line, fragment of the message)
BAD: list[tuple[str, str, str | None, int | None, str]] = [
    ("unknown-top-key", GOOD + "colour: blue\n", "colour", 15, "unknown key 'colour'"),
    ("typo-key-hint", replace("kernel:", "kernal:"), "kernal", 4, "unknown key"),
    (
        "unknown-nested-key",
        replace("  tree: tree\n", "  tree: tree\n  flavour: x\n"),
        "base.flavour",
        4,
        "unknown key",
    ),
    ("missing-name", GOOD.replace("name: good\n", ""), None, 1, "missing required key 'name'"),
    ("bad-name", replace("name: good", "name: Good_Image"), "name", 1, "invalid value"),
    ("name-wrong-type", replace("name: good", "name: [a]"), "name", 1, "expected a string"),
    ("missing-base", replace("base:\n  tree: tree\n", ""), None, 1, "missing required key 'base'"),
    ("tree-missing", replace("tree: tree", "tree: nowhere"), "base.tree", 3, "does not exist"),
    (
        "tarball-missing",
        replace("tree: tree", "tarball: none.tar"),
        "base.tarball",
        3,
        "does not exist",
    ),
    (
        "tree-and-tarball",
        replace("  tree: tree\n", "  tree: tree\n  tarball: base.tar\n"),
        "base",
        3,
        "at most one",
    ),
    (
        "packages-with-tree",
        replace("  tree: tree\n", "  tree: tree\n  packages: [tboot]\n"),
        "base",
        3,
        "no effect",
    ),
    (
        "bad-package-name",
        replace("  tree: tree\n", "  packages: [Not A Package]\n"),
        "base.packages[0]",
        3,
        "invalid value",
    ),
    (
        "duplicate-package",
        replace("  tree: tree\n", "  packages: [tboot, tboot]\n"),
        "base.packages[1]",
        3,
        "duplicate entry",
    ),
    (
        "bad-format",
        replace("  tree: tree\n", "  tree: tree\n  format: ext4\n"),
        "base.format",
        4,
        "invalid value 'ext4'",
    ),
    (
        "bad-level",
        replace("  tree: tree\n", "  tree: tree\n  compression_level: 99\n"),
        "base.compression_level",
        4,
        "out of range",
    ),
    (
        "level-not-int",
        replace("  tree: tree\n", "  tree: tree\n  compression_level: high\n"),
        "base.compression_level",
        4,
        "expected an integer",
    ),
    (
        "cmdline-quotes",
        replace("cmdline: console=ttyS0", 'cmdline: "console=ttyS0 x=\\"a b\\""'),
        "kernel.cmdline",
        5,
        "invalid value",
    ),
    (
        "cmdline-double-space",
        replace("cmdline: console=ttyS0", 'cmdline: "console=ttyS0  quiet"'),
        "kernel.cmdline",
        5,
        "invalid value",
    ),
    (
        "cmdline-reserved",
        replace("cmdline: console=ttyS0", "cmdline: console=ttyS0 actvsm.mode=admin"),
        "kernel.cmdline",
        5,
        "set by actvsm",
    ),
    ("missing-mode", replace("  - name: update\n", ""), "modes", 7, "missing boot mode(s): update"),
    (
        "duplicate-mode",
        replace("  - name: update\n", "  - name: update\n  - name: admin\n"),
        "modes[3].name",
        10,
        "duplicate mode name",
    ),
    (
        "mode-not-mapping",
        replace("  - name: update\n", "  - update\n"),
        "modes[2]",
        9,
        "expected a mapping",
    ),
    (
        "modes-not-list",
        replace("modes:\n  - name: normal\n  - name: admin\n  - name: update\n", "modes: normal\n"),
        "modes",
        6,
        "expected a list",
    ),
    (
        "platform-missing",
        replace("platform: plat.yaml", "platform: nosuch.yaml"),
        "platform",
        10,
        "not found",
    ),
    ("size-garbage", replace("size: 64M", "size: lots"), "volumes[0].size", 13, "invalid size"),
    ("size-too-small", replace("size: 64M", "size: 1M"), "volumes[0].size", 13, "out of range"),
    (
        "size-not-aligned",
        replace("size: 64M", "size: 33554433"),
        "volumes[0].size",
        13,
        "not a multiple",
    ),
    ("size-negative", replace("size: 64M", "size: -5"), "volumes[0].size", 13, "out of range"),
    (
        "volume-unknown-mode",
        replace("modes: [normal, admin]", "modes: [normal, debug]"),
        "volumes[0].modes[1]",
        14,
        "mode 'debug', which is not defined",
    ),
    (
        "volume-no-modes",
        replace("modes: [normal, admin]", "modes: []"),
        "volumes[0].modes",
        14,
        "expected 1..8 items",
    ),
    (
        "duplicate-volume",
        GOOD + "  - name: data\n    size: 64M\n    modes: [normal]\n",
        "volumes[1].name",
        15,
        "duplicate volume name",
    ),
    (
        "volume-missing-size",
        replace("    size: 64M\n", ""),
        "volumes[0]",
        12,
        "missing required key 'size'",
    ),
    (
        "content-without-fs",
        replace("    size: 64M\n", "    size: 64M\n    filesystem: none\n    content: content\n"),
        "volumes[0].content",
        12,
        "needs a file system",
    ),
    (
        "content-missing",
        replace("    size: 64M\n", "    size: 64M\n    content: nowhere\n"),
        "volumes[0].content",
        14,
        "does not exist",
    ),
    (
        "recovery-mode-volume",
        replace(
            "  - name: update\n", "  - name: update\n  - name: rescue\n    keys: false\n"
        ).replace("modes: [normal, admin]", "modes: [normal, rescue]"),
        "volumes[0].modes[1]",
        16,
        "recovery mode",
    ),
    (
        "duplicate-key",
        replace("name: good\n", "name: good\nname: other\n"),
        "name",
        2,
        "duplicate key",
    ),
    (
        "bool-as-string",
        replace("    size: 64M\n", "    size: 64M\n    recovery_passphrase: 'yes'\n"),
        "volumes[0].recovery_passphrase",
        14,
        "expected true or false",
    ),
    ("bad-bank", GOOD + "sealing:\n  bank: md5\n", "sealing.bank", 16, "invalid value 'md5'"),
    (
        "phase-pcr-not-sealed",
        GOOD + "sealing:\n  pcrs: [17, 18]\n",
        "sealing.phase_pcr",
        16,
        "not among sealing.pcrs",
    ),
    (
        "pcr-out-of-range",
        GOOD + "sealing:\n  pcrs: [11, 24]\n",
        "sealing.pcrs[1]",
        16,
        "out of range",
    ),
    ("bad-integrity", GOOD + "integrity: none\n", "integrity", 15, "invalid value 'none'"),
    ("yaml-syntax", GOOD + "volumes: [\n", None, 16, "YAML syntax error"),
    ("empty-file", "", None, None, "empty"),
    ("top-level-list", "- name: x\n", None, 1, "expected a mapping"),
    ("epoch-negative", GOOD + "source_date_epoch: -1\n", "source_date_epoch", 15, "out of range"),
    (
        "volume-name-too-long",
        replace("  - name: data\n", "  - name: " + "v" * 26 + "\n"),
        "volumes[0].name",
        12,
        "invalid value",
    ),
    (
        "extra-tree-with-prebuilt-tree",
        replace("  tree: tree\n", "  tree: tree\n  extra_tree: content\n"),
        "base",
        3,
        "'extra_tree' applies",
    ),
    (
        "mirror-not-url",
        replace("  tree: tree\n", "  mirror: ftp.example\n"),
        "base.mirror",
        3,
        "invalid value",
    ),
]


@pytest.mark.parametrize(
    ("text", "field", "line", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_malformed_definition_names_file_line_field(
    tmp_path: Path, text: str, field: str | None, line: int | None, fragment: str
) -> None:
    path = write_def(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_definition(path)
    err = info.value
    assert err.exit_status == 2
    assert fragment in err.message, str(err)
    assert err.location is not None
    assert Path(str(err.location.file)).resolve() == path.resolve()
    assert err.location.field == field, str(err)
    assert err.location.line == line, str(err)


def test_at_least_25_malformed_cases() -> None:
    assert len(BAD) >= 25


def test_good_definition_loads_with_defaults(tmp_path: Path) -> None:
    defn = load_definition(write_def(tmp_path, GOOD))
    assert defn.name == "good"
    assert [m.name for m in defn.modes] == ["normal", "admin", "update"]
    assert defn.volumes[0].size == 64 << 20
    assert defn.volumes[0].modes == ("normal", "admin")
    assert defn.sealing.pcrs == (11, 17, 18, 19)
    assert defn.base.format == "squashfs"
    assert defn.integrity == "verity"


def test_definition_json_round_trip(tmp_path: Path) -> None:
    defn = load_definition(write_def(tmp_path, GOOD))
    data = json.loads(json.dumps(defn.to_json()))
    assert data["volumes"][0]["modes"] == ["normal", "admin"]
    assert data["base"]["tree"] == str((tmp_path / "tree").resolve())


def test_shipped_definitions_are_valid() -> None:
    load_definition(paths.IMAGES / "default.yaml")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_validate_cli_bad_input_exit_2_one_message_nothing_written(tmp_path: Path) -> None:
    path = write_def(tmp_path, replace("size: 64M", "size: lots"))
    out = tmp_path / "out"
    proc = cli("validate", str(path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    first = proc.stderr.splitlines()[0]
    assert f"{path}:13: volumes[0].size: invalid size 'lots'" in first
    proc = cli("build", str(path), "-o", str(out), "--no-cache")
    assert proc.returncode == 2
    assert not out.exists()


def test_validate_cli_json(tmp_path: Path) -> None:
    proc = cli("validate", "--json", str(write_def(tmp_path, GOOD)))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["modes"] == ["normal", "admin", "update"]
    bad = write_def(tmp_path, GOOD + "colour: blue\n")
    proc = cli("validate", "--json", str(bad))
    assert proc.returncode == 2
    err = json.loads(proc.stdout)
    assert (err["field"], err["line"], err["kind"]) == ("colour", 15, "input")


def test_reference_docs_are_generated_from_the_table() -> None:
    doc = (paths.ROOT / "docs" / "definition.md").read_text()
    assert doc == reference_markdown(), (
        "docs/definition.md is stale: run `actvsm schema > docs/definition.md`"
    )
