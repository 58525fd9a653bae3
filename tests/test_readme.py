"""The README's layout section names every module and script, so a newcomer can find each one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_layout_names_every_module_and_script():
    layout = (ROOT / "README.md").read_text().split("\n## Layout\n", 1)[1]
    files = sorted(ROOT.glob("recsys_tt/*.py")) + sorted(p for p in (ROOT / "scripts").iterdir() if p.is_file())
    missing = [f.name for f in files if not re.search(rf"(?<![\w.]){re.escape(f.name)}", layout)]
    assert files and not missing
