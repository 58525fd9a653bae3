"""Entry points: bad input ends in one line that says what to fix, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from recsys_tt.cli import user_errors
from recsys_tt.data.tables import DataError


def test_user_errors_become_one_line_and_exit_status_2(capsys, monkeypatch):
    monkeypatch.delenv("RECSYS_TT_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as done, user_errors():
        raise DataError("items.csv, row 3: empty item_id; every row needs one.")
    assert done.value.code == 2
    assert capsys.readouterr().err == "error: items.csv, row 3: empty item_id; every row needs one.\n"
    with pytest.raises(KeyError), user_errors():  # a bug keeps its traceback
        raise KeyError("bug")
    monkeypatch.setenv("RECSYS_TT_TRACEBACK", "1")
    with pytest.raises(DataError), user_errors():
        raise DataError("kept for debugging")


def test_a_script_given_a_missing_file_prints_one_line(tmp_path):
    done = subprocess.run([sys.executable, "scripts/add_items.py", "--export", str(tmp_path / "none"), "--items",
                           str(tmp_path / "none.csv")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: ") and "Traceback" not in done.stderr
