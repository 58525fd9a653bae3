"""Replacing a folder atomically: what a crash at any point leaves behind, and how the next run cleans it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from recsys_tt.files import FolderBusyError, replacing, restore_interrupted_swap


def _folder(path, text):
    path.mkdir(parents=True, exist_ok=True)
    (path / "data.txt").write_text(text)
    return path


def test_a_block_that_fails_leaves_the_old_folder_and_no_staging_copy(tmp_path):
    out = _folder(tmp_path / "export", "old")
    with pytest.raises(RuntimeError), replacing(out) as staging:
        (staging / "data.txt").write_text("half")
        raise RuntimeError("killed while writing")
    assert (out / "data.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export.lock", "export"]
    with replacing(out) as staging:
        (staging / "data.txt").write_text("new")
    assert (out / "data.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export.lock", "export"]


def test_a_crash_between_the_two_renames_is_undone(tmp_path):
    out = _folder(tmp_path / "export", "old")
    out.rename(tmp_path / ".export.old")  # the first rename happened, the second did not
    restore_interrupted_swap(out)
    assert (out / "data.txt").read_text() == "old" and not (tmp_path / ".export.old").exists()


def test_staging_copies_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = _folder(tmp_path / "export", "old")
    for name, pid in ((".export-dead", dead.stdout.strip()), (".export-live", str(os.getpid()))):
        _folder(tmp_path / name / "export", "half")
        (tmp_path / name / "OWNER_PID").write_text(pid)
    with replacing(out) as staging:
        (staging / "data.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export-live", ".export.lock", "export"]


def test_a_second_writer_of_the_same_folder_is_refused_and_changes_nothing(tmp_path):
    out = _folder(tmp_path / "export", "old")
    with replacing(out) as staging:
        (staging / "data.txt").write_text("first")
        with pytest.raises(FolderBusyError, match="Another process is writing"), replacing(out) as second:
            (second / "data.txt").write_text("second")
    assert (out / "data.txt").read_text() == "first"
    with replacing(out) as staging:  # the lock went with the first writer
        (staging / "data.txt").write_text("third")
    assert (out / "data.txt").read_text() == "third"
