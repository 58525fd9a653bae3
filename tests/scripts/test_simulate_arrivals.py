"""scripts/simulate_arrivals.py on the tiny world: one comparison table, JSON and plot; finished runs are reused,
and another directed setting reruns only the directed policies."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from recsys_tt.offline.policies import DIRECTED, arrival_policies, slug
from tests.helpers import load_script

POLICIES = [arrival_policies()[0].name, arrival_policies()[2].name]  # greedy and directed


def test_a_comparison_writes_its_table_json_and_plot_and_resumes(before_export, tmp_path, capsys):
    export, _ = before_export
    simulate = load_script("simulate_arrivals")
    args = dict(export=str(export), seeds=[0, 1], rounds=2, users_per_round=8, k=3, refresh_steps=3, eval_users=8,
                policies=POLICIES, out=str(tmp_path))
    simulate.main(**args)
    summary = json.loads((tmp_path / "arrivals.json").read_text())
    gain = summary["comparison"][POLICIES[1]]["clicks"]
    assert summary["comparison"][POLICIES[1]]["seeds"] == [0, 1] and gain["low"] <= gain["gain"] <= gain["high"]
    assert (tmp_path / "arrivals.png").stat().st_size > 1000
    assert POLICIES[1] in capsys.readouterr().out
    result = tmp_path / "seed1" / "greedy_retraining" / "result.json"
    written = result.stat().st_mtime_ns
    simulate.main(**args)  # the same settings: read back, not run again
    assert result.stat().st_mtime_ns == written
    directed = tmp_path / "seed1" / slug(POLICIES[1]) / "result.json"
    directed_written = directed.stat().st_mtime_ns
    simulate.main(**{**args, "directed": replace(DIRECTED, bonus=0.5)})  # only the directed policy runs again
    assert result.stat().st_mtime_ns == written and directed.stat().st_mtime_ns != directed_written
    assert json.loads(directed.read_text())["settings"]["policy"]["exploration"]["bonus"] == 0.5
    simulate.main(**{**args, "seeds": [1], "satiation": 0.9})  # other settings: run again
    assert result.stat().st_mtime_ns != written


def test_an_export_without_a_cut_is_refused(flat_export, tmp_path):
    with pytest.raises(ValueError, match="trained without data.before"):
        load_script("simulate_arrivals").main(export=str(flat_export), out=str(tmp_path))
