"""The floors hold: lint-imports (pyproject.toml's contracts) passes on the package and fails on a back-import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = str(Path(sys.executable).parent / "lint-imports")


def _lint(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache"], cwd=folder, capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_floors_and_a_back_import_breaks_them(tmp_path):
    kept = _lint(ROOT)
    assert kept.returncode == 0 and "2 kept, 0 broken" in kept.stdout, kept.stdout[-2000:]
    shutil.copytree(ROOT / "recsys_tt", tmp_path / "recsys_tt", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / "recsys_tt" / "data" / "text.py").open("a") as text:
        text.write("\nfrom recsys_tt.training.module import TwoTowerModule  # noqa: E402, F401\n")
    broken = _lint(tmp_path)
    assert broken.returncode == 1
    assert "recsys_tt.data is not allowed to import recsys_tt.training" in broken.stdout
    assert "recsys_tt.data is not allowed to import pytorch_lightning" in broken.stdout
