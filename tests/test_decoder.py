"""A decoder LLM (tiny Llama built in code) through train -> export -> offline scoring -> serving, on CPU."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import train_args as _args

from recsys_tt.export import ExportFolder, export_model
from recsys_tt.recommender import Recommender, RecommendRequest
from recsys_tt.scoring import score_users
from train import main


@pytest.mark.parametrize("user_input", ["item_vectors", "text"])
def test_tiny_decoder_trains_exports_scores_and_serves(tmp_path, tiny_dataset, tiny_llama, user_input):
    cli = main(_args(tmp_path, tiny_dataset, tiny_llama, 3, "--model.tower.pooling", "last",
                     "--model.tower.user_input", user_input))
    names = [n for n, p in cli.model.named_parameters() if p.requires_grad]
    assert any("q_proj.lora_A.user" in n for n in names) and any("down_proj.lora_B.item" in n for n in names)
    assert 0.0 <= float(cli.trainer.callback_metrics["test/ndcg@10"]) <= 1.0
    folder = export_model(tmp_path / "ml100k_minilm/version_0/checkpoints/last.ckpt", tmp_path / "export")
    assert ExportFolder.load(folder).meta["backbone"] == tiny_llama
    report = score_users(folder, tmp_path / "recs.parquet", k=5)
    assert report["rows"] == 8 * 5 and pd.read_parquet(tmp_path / "recs.parquet")["score"].notna().all()
    served = Recommender.load(folder).recommend(RecommendRequest(text="A 25 year old writer.", recent_item_ids=["i3"],
                                                                 k=3, seed=0))
    assert len(served["items"]) == 3 and "i3" not in {i["item_id"] for i in served["items"]}
