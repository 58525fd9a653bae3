"""scripts/sweep_unseen_boost.py on tiny data: a cold-items run evaluated at several boosts, on validation and test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys_tt.training.lightning_cli import main as train_cli
from tests.helpers import load_script, train_args


def test_the_sweep_reports_cold_and_warm_users_at_each_boost(tmp_path, tiny_dataset, tiny_bert, capsys,
                                                             monkeypatch):
    sweep = load_script("sweep_unseen_boost")
    fit = train_cli(train_args(tmp_path, tiny_dataset, tiny_bert, 4, "--data.cold_items", "0.25", "--model.id_lr",
                               "0.5", "--model.tower.unseen_items", "text"))
    run = Path(fit.trainer.log_dir)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    results = sweep.main(run=str(run), boosts=[0.0, 100.0], checkpoint=fit.trainer.ckpt_path)
    plain = fit.trainer.callback_metrics  # the fit's test of the same checkpoint, unboosted
    assert results["0.0"]["test"]["all"] == pytest.approx(float(plain["test/ndcg@10"]), abs=1e-6)
    assert results["0.0"]["test"]["cold"] == pytest.approx(float(plain["test_cold/ndcg@10"]), abs=1e-6)
    assert results["100.0"]["test"] != results["0.0"]["test"]  # a boost that large reorders every user's items
    assert set(results["100.0"]) == {"val", "test"}
    saved = json.loads((run / "unseen_boost.json").read_text())["results"]
    assert saved == json.loads(json.dumps(results))
    assert (run / "unseen_boost.png").stat().st_size > 1000
    assert "boost" in capsys.readouterr().out
    assert not any((tmp_path / "elsewhere").iterdir())  # its evaluations have no logger: nothing left where it ran


def test_a_run_without_cold_items_is_refused(tmp_path, tiny_dataset, tiny_bert):
    sweep = load_script("sweep_unseen_boost")
    fit = train_cli(train_args(tmp_path, tiny_dataset, tiny_bert, 2))
    with pytest.raises(ValueError, match="trained without data.cold_items"):
        sweep.main(run=fit.trainer.log_dir)
