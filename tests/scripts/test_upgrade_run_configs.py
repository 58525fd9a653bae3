"""Saved run configs from before the floor folders name old class paths; the upgrade command rewrites them."""

from __future__ import annotations

import importlib
import re

import pytest
import yaml

from tests.helpers import ROOT, load_script

OLD_CONFIG = """\
trainer:
  callbacks:
  - class_path: recsys_tt.plots.PlotCurves
  - class_path: recsys_tt.ema.TrainableEMA
    init_args:
      decay: 0.99
  strategy:
    init_args:
      auto_wrap_policy: recsys_tt.fsdp.transformer_blocks
"""


def _importable(path: str) -> bool:
    module, _, name = path.rpartition(".")
    return hasattr(importlib.import_module(module), name)


def test_every_moved_path_exists_and_an_old_run_config_is_rewritten_with_its_original_kept(tmp_path, capsys):
    upgrade = load_script("upgrade_run_configs")
    assert all(_importable(new) for new in upgrade.MOVED.values())
    config = tmp_path / "runs" / "x" / "version_0" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(OLD_CONFIG)
    upgrade.main(str(tmp_path / "runs"))
    new = yaml.safe_load(config.read_text())
    assert [c["class_path"] for c in new["trainer"]["callbacks"]] == [
        "recsys_tt.training.callbacks.PlotCurves", "recsys_tt.training.ema.TrainableEMA"]
    assert new["trainer"]["strategy"]["init_args"]["auto_wrap_policy"] == "recsys_tt.training.fsdp.transformer_blocks"
    assert (config.parent / "config.yaml.orig").read_text() == OLD_CONFIG
    assert "1 of 1 config(s)" in capsys.readouterr().out
    upgrade.main(str(config))  # nothing left to change: the backup is not overwritten
    assert (config.parent / "config.yaml.orig").read_text() == OLD_CONFIG


def test_no_shipped_config_names_a_path_that_does_not_import():
    paths = set()
    for config in (ROOT / "configs").glob("*.yaml"):
        text = config.read_text()
        paths |= set(re.findall(r"recsys_tt\.[\w.]+", text))
    assert paths and all(_importable(p) for p in paths), paths
    with pytest.raises(FileNotFoundError):
        load_script("upgrade_run_configs").main(str(ROOT / "no_such_runs"))
