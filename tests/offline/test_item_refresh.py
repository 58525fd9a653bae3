"""Refreshing an export's item vectors from its log: new items learn from clicks, skipped items lose, the folder
stays a consistent, verified export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_tt.export.catalog import add_items
from recsys_tt.export.folder import ExportFolder
from recsys_tt.offline.item_refresh import RefreshConfig, refresh_item_vectors
from recsys_tt.serving.explore import ExplorationConfig
from recsys_tt.serving.recommender import Recommender
from recsys_tt.serving.requests import RecommendRequest, ServingConfig

SERVING = ServingConfig(exploration=ExplorationConfig(temperature=0.0, propensity_samples=0))
HISTORIES = [["i1", "i2"], ["i3"], ["i4", "i5"], ["i6"]]


def _add(folder, item: str, title: str, tmp_path) -> None:
    path = tmp_path / f"{item}.csv"
    pd.DataFrame({"item_id": [item], "title": [title], "genres": ["Drama"]}).to_csv(path, index=False)
    add_items(folder, path)


@pytest.fixture
def refreshed_setup(flat_export, tmp_path):
    """An export with a new item "n1", and a log where every user clicked "n1" and skipped the rest."""
    folder = tmp_path / "export"
    shutil.copytree(flat_export, folder)
    _add(folder, "n1", "A brand new film", tmp_path)
    server = Recommender.load(folder, SERVING, log_dir=tmp_path / "log")
    for history in HISTORIES:
        response = server.recommend(RecommendRequest(text="A viewer.", recent_item_ids=history, k=10))
        assert "n1" in [item["item_id"] for item in response["items"]]
        server.feedback(response["request_id"], "n1", 1.0)
    server.log.close()
    return folder, tmp_path / "log"


def _scores(export: ExportFolder, item: str) -> np.ndarray:
    rows = export.item_rows
    users = export.new_user_vectors(["A viewer."] * len(HISTORIES),
                                    [np.array([rows[i] for i in h]) for h in HISTORIES])
    return users @ export.vectors[rows[item]]


def test_a_refresh_teaches_a_new_item_its_clicks_and_keeps_the_folder_consistent(refreshed_setup):
    folder, logs = refreshed_setup
    before = ExportFolder.load(folder)
    new_before = _scores(before, "n1")
    summary = refresh_item_vectors(folder, logs, RefreshConfig(prior_precision=1.0))
    after = ExportFolder.load(folder)  # verified: every hash and shape matches
    assert summary["slates"] == 4 and summary["clicks"] == 4 and summary["loss_last"] < summary["loss_first"]
    assert (_scores(after, "n1") > new_before + 0.05).all()
    assert after.meta["model_version"] != before.meta["model_version"]
    assert after.meta["model_hparams"]["num_items"] == 13 and after.meta["refresh"]["prior_precision"] == 1.0
    assert after.items.set_index("item_id")["logged_clicks"].to_dict()["n1"] == 4
    model = after.encoder.model  # the towers reloaded from the folder give the vectors it serves
    rebuilt = model.add_item_ids(torch.from_numpy(after.text_vectors), torch.arange(13)).detach().numpy()
    assert np.allclose(rebuilt, after.vectors, atol=1e-5) and bool(model.seen_items[12])


def test_what_shown_new_items_teach_moves_the_new_items_never_shown(refreshed_setup, tmp_path):
    folder, logs = refreshed_setup  # every user clicked the new "n1"
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    for copy in (shared, alone):
        shutil.copytree(folder, copy)
        _add(copy, "n2", "Another new film", tmp_path)  # after the log: never shown, and no alternative to "n1"
    vector = ExportFolder.load(alone).vectors[-1]
    # clicks only: the catalog's other cold item, "i11", was shown and skipped on every slate, which as impressions
    # would weigh against the group as much as the clicks on "n1" weigh for it
    refresh_item_vectors(shared, logs, RefreshConfig(prior_precision=1.0, log_impressions=0.0))
    refresh_item_vectors(alone, logs, RefreshConfig(prior_precision=1.0, log_impressions=0.0, cold_offset=False))
    assert np.allclose(ExportFolder.load(alone).vectors[-1], vector, atol=1e-5)  # no evidence: it stays put
    assert (_scores(ExportFolder.load(shared), "n2") > _scores(ExportFolder.load(alone), "n2") + 0.02).all()
    assert ExportFolder.load(shared).meta["refresh"]["cold_offset_norm"] > 0
    for copy in (shared, alone):  # an item added after the refresh starts from the offset too
        _add(copy, "n3", "A third new film", tmp_path)
    assert (_scores(ExportFolder.load(shared), "n3") > _scores(ExportFolder.load(alone), "n3") + 0.02).all()


def test_refreshing_again_on_the_same_log_counts_its_evidence_once(refreshed_setup, tmp_path):
    folder, logs = refreshed_setup
    once, twice = tmp_path / "once", tmp_path / "twice"
    shutil.copytree(folder, once)
    shutil.copytree(folder, twice)
    config = RefreshConfig(prior_precision=1.0, steps=100, log_impressions=0.0)
    before = ExportFolder.load(folder).vectors
    refresh_item_vectors(once, logs, config)
    for _ in range(2):  # the prior stays the vectors before the first refresh
        refresh_item_vectors(twice, logs, config)
    moved = np.abs(ExportFolder.load(once).vectors - before).max()
    # the users, encoded from the refreshed vectors, move a little (0.02 here, of 0.25); a prior centred on the last
    # refresh counted the clicks twice and moved items 0.075 further
    assert np.abs(ExportFolder.load(twice).vectors - ExportFolder.load(once).vectors).max() < 0.15 * moved
    _add(twice, "n2", "Another new film", tmp_path)  # an item added after a refresh gets a prior mean too
    refresh_item_vectors(twice, logs, config)
    assert np.abs(ExportFolder.load(twice).vectors[:-1] - ExportFolder.load(once).vectors).max() < 0.15 * moved


def test_skipped_items_lose_more_when_impressions_count(refreshed_setup, tmp_path):
    folder, logs = refreshed_setup
    clicks_only = tmp_path / "clicks_only"
    shutil.copytree(folder, clicks_only)
    first = json.loads(next(logs.glob("impressions-*.jsonl")).read_text().splitlines()[0])
    skipped = next(i for i in first["slate"] if i != "n1")  # on top of the first slate and never clicked
    before = _scores(ExportFolder.load(folder), skipped)
    refresh_item_vectors(folder, logs, RefreshConfig(prior_precision=1.0))
    refresh_item_vectors(clicks_only, logs, RefreshConfig(prior_precision=1.0, log_impressions=0.0))
    drop = before - _scores(ExportFolder.load(folder), skipped)
    drop_clicks_only = before - _scores(ExportFolder.load(clicks_only), skipped)
    assert drop.mean() > drop_clicks_only.mean()


def test_a_log_without_clicks_is_refused_and_the_export_is_untouched(flat_export, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(flat_export, folder)
    server = Recommender.load(folder, SERVING, log_dir=tmp_path / "log")
    server.recommend(RecommendRequest(user_id="u1", k=3))
    server.log.close()
    meta = (folder / "meta.json").read_text()
    with pytest.raises(ValueError, match="holds no clicks"):
        refresh_item_vectors(folder, tmp_path / "log", RefreshConfig())
    assert (folder / "meta.json").read_text() == meta
    with pytest.raises(ValueError, match="refresh needs steps >= 1"):
        RefreshConfig(steps=0)
