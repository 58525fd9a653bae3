"""scripts/bench_ablation.py on tiny data: every row runs on the standard split and with cold items, one table."""

from __future__ import annotations

import json

import pytest

from tests.helpers import load_script, train_args


def test_ablation_rows_report_standard_and_cold_metrics(tmp_path, tiny_dataset, tiny_bert, capsys):
    bench = load_script("bench_ablation")
    args = train_args(tmp_path / "runs", tiny_dataset, tiny_bert, 2)[2:]  # after `fit --config`
    bench.main(datasets={"tiny": args}, rows=["shipped", "frozen backbone"], steps=2, cold_items=0.25, parallel=2,
               out=str(tmp_path / "out"))
    results = json.loads((tmp_path / "out" / "ablation.json").read_text())["results"]
    assert list(results) == ["tiny | shipped", "tiny | frozen backbone"]
    for result in results.values():
        assert 0 <= result["full"]["test_ndcg@10"] <= result["full"]["test_recall@10"] <= 1
        assert "test_cold_ndcg@10" in result["cold"] and "test_warm_ndcg@10" in result["cold"]
        assert "test_cold_ndcg@10" not in result["full"]
        assert result["full"]["fit_seconds"] > 0 and result["full"]["peak_rss_gb"] > 0
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "tiny | shipped" in printed and "tiny | frozen backbone" in printed


def test_unknown_rows_are_refused_before_anything_runs(tmp_path):
    bench = load_script("bench_ablation")
    with pytest.raises(ValueError, match=r"Unknown rows \['no pretraining'\]"):
        bench.main(rows=["no pretraining"], out=str(tmp_path))
    assert not (tmp_path / "ablation.json").exists()
