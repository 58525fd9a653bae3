"""The README's layout section is the folder tree: every floor with its modules, every script, and tests/ mirroring
the package, so a newcomer finds each module where the README says it is."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _layout() -> str:
    section = (ROOT / "README.md").read_text().split("\n## Layout\n", 1)[1]
    return section.split("```", 2)[1]


def _blocks(layout: str) -> dict[str, str]:
    """The text of each entry of the tree: a line indented by two spaces or none starts one."""
    blocks, name = {}, None
    for line in layout.splitlines():
        entry = re.match(r"^(?:  )?(\S+)", line)
        if entry:
            name = entry[1]
        if name:
            blocks[name] = blocks.get(name, "") + line + "\n"
    return blocks


def _names(text: str, files: list[Path]) -> list[str]:
    return [f.name for f in files if not re.search(rf"(?<![\w.]){re.escape(f.name)}", text)]


def test_the_readme_layout_is_the_package_tree():
    blocks = _blocks(_layout())
    floors = sorted(p.parent.name for p in (ROOT / "recsys_tt").glob("*/__init__.py"))
    assert floors and floors == sorted(name.rstrip("/") for name in blocks if name.endswith("/") and
                                       name not in ("recsys_tt/", "configs/", "scripts/", "tests/", "docs/"))
    for floor in floors:
        assert not _names(blocks[f"{floor}/"], sorted((ROOT / "recsys_tt" / floor).glob("[!_]*.py"))), floor
    leaves = sorted((ROOT / "recsys_tt").glob("[!_]*.py"))
    assert not _names(blocks["files.py"], leaves)
    scripts = sorted(p for p in (ROOT / "scripts").iterdir() if p.is_file())
    assert not _names(_layout().split("\nscripts/\n", 1)[1].split("\ntests/", 1)[0], scripts)


def test_tests_mirror_the_package():
    floors = {p.parent.name for p in (ROOT / "recsys_tt").glob("*/__init__.py")}
    test_folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert test_folders == floors | {"scripts", "fixtures"}  # fixtures: artifacts written by earlier versions
