"""The arrivals simulator: a world cut in time, items released with their text, rounds of serve -> log -> refresh."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recsys_tt.data.propensity_log import read_impressions
from recsys_tt.export.folder import ExportFolder
from recsys_tt.offline.arrivals import ArrivalConfig, ArrivalWorld, paired_gain, run_arrivals
from recsys_tt.offline.item_refresh import RefreshConfig
from recsys_tt.offline.policies import ArrivalPolicy
from recsys_tt.serving.explore import ExplorationConfig
from tests.helpers import CUT


def test_a_world_releases_items_in_the_round_of_their_first_review_and_holds_out_each_users_last():
    rows = [("a", "i1", 0), ("a", "i2", 10), ("a", "i3", 20), ("a", "i4", 30),
            ("b", "i1", 5), ("b", "i3", 25), ("b", "i5", 35), ("c", "i5", 31), ("c", "i4", 32)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    world = ArrivalWorld.build(frame, cut=20, rounds=2, known_items={"i1", "i2"})
    assert world.bounds[:2] == [20, 30.5]  # the cut, then the median time after it
    assert world.release == {"i3": 0, "i4": 0, "i5": 1}
    assert world.start == {"a": ["i1", "i2"], "b": ["i1"], "c": []}  # c arrives after the cut
    assert world.wanted == {"a": ["i3"], "b": ["i3"], "c": ["i5"]}
    assert world.held_out == {"a": "i4", "b": "i5", "c": "i4"}
    assert world.active == [["a", "b"], ["b", "c"]]


def test_paired_gain_is_zero_for_equal_policies_and_counts_a_missing_user_as_zero():
    same = paired_gain([({"a": 1, "b": 2}, {"a": 1, "b": 2})])
    assert (same["gain"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    more = paired_gain([({"a": 2, "b": 2, "c": 2}, {"a": 1, "b": 1})], resamples=200)
    assert more["gain"] == pytest.approx(2.0) and more["low"] <= 2.0 <= more["high"]
    assert more["difference"] == pytest.approx(4.0) and more["difference_low"] <= 4.0 <= more["difference_high"]
    new = paired_gain([({"a": 1}, {"a": 0, "b": 0}), ({"c": 3}, {})], resamples=200)  # from nothing: no ratio
    assert np.isnan(new["gain"]) and new["difference"] == pytest.approx(2.0)  # 4 more over 2 seeds


@pytest.mark.parametrize("text_prior", [True, False])
def test_rounds_release_items_serve_log_and_refresh(before_export, tmp_path, text_prior):
    export, paths = before_export
    interactions = pd.read_csv(paths["interactions"], dtype={"user_id": str, "item_id": str})
    items = pd.read_csv(paths["items"], dtype={"item_id": str})
    base = ExportFolder.load(export)
    assert set(base.item_ids) == {f"i{i}" for i in range(10)}  # the catalog as it was at the cut
    world = ArrivalWorld.build(interactions, CUT, 2, set(base.item_ids))
    assert set(world.release) == {"i10", "i11"}
    policy = ArrivalPolicy("directed", ExplorationConfig(temperature=0.5, head=1, bonus=0.1, propensity_samples=50),
                           log_impressions=1.0, text_prior=text_prior)
    config = ArrivalConfig(rounds=2, users_per_round=8, k=4, refresh=RefreshConfig(steps=3), eval_users=8)
    result = run_arrivals(world, items, export, policy, config, tmp_path / "run", seed=0)
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    assert sum(r["released"] for r in result["rounds"]) == 2 and result["rounds"][-1]["catalog"] == 12
    assert sum(r["clicks"] for r in result["rounds"]) == sum(result["clicks"].values()) > 0
    assert 0 < result["coverage"] <= 1 and all(0 <= v <= 1 for v in result["ndcg@10"].values())
    final = ExportFolder.load(tmp_path / "run" / "export")
    texts = final.items.set_index("item_id")["text"]
    assert (texts["i10"] == texts["i11"]) is not text_prior  # without the prior every new item reads the same
    slates = read_impressions(tmp_path / "run" / "log")
    assert len(slates) == sum(r["users"] for r in result["rounds"]) and (slates["bonus"] == 0.1).all()
    assert slates["user_key"].notna().all()
    if any(r["refreshed"] for r in result["rounds"]):
        assert "refresh" in final.meta
    json.dumps(result)  # the script writes it as it is
    assert np.isfinite(result["rounds"][-1]["novelty"])
