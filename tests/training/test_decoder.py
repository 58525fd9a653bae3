"""A decoder LLM (tiny Llama built in code) through train -> export -> offline scoring -> serving, on CPU."""

from __future__ import annotations

import pandas as pd
import pytest

from recsys_tt.export.folder import ExportFolder
from recsys_tt.offline.scoring import evaluate_recommendations, score_users
from recsys_tt.serving.recommender import Recommender
from recsys_tt.serving.requests import RecommendRequest
from recsys_tt.training.export import export_model
from recsys_tt.training.lightning_cli import main
from tests.helpers import train_args as _args


@pytest.mark.parametrize("user_input", ["item_vectors", "text"])
def test_tiny_decoder_trains_exports_scores_and_serves(tmp_path, tiny_dataset, tiny_llama, user_input):
    cli = main(_args(tmp_path, tiny_dataset, tiny_llama, 3, "--model.tower.pooling", "last",
                     "--model.tower.user_input", user_input))
    names = [n for n, p in cli.model.named_parameters() if p.requires_grad]
    assert any("q_proj.lora_A.user" in n for n in names) and any("down_proj.lora_B.item" in n for n in names)
    folder = export_model(cli.trainer.ckpt_path, tmp_path / "export")  # the checkpoint that was tested
    assert ExportFolder.load(folder).meta["backbone"] == tiny_llama
    report = score_users(folder, tmp_path / "recs.parquet", k=7)  # every user's 7 unseen items: the full ranking
    assert report["rows"] == 8 * 7 and pd.read_parquet(tmp_path / "recs.parquet")["score"].notna().all()
    offline = evaluate_recommendations(tmp_path / "recs.parquet", folder, "test", (10,))
    assert offline["ndcg@10"] == pytest.approx(float(cli.trainer.callback_metrics["test/ndcg@10"]), abs=1e-4)
    served = Recommender.load(folder).recommend(RecommendRequest(text="A 25 year old writer.", recent_item_ids=["i3"],
                                                                 k=3, seed=0))
    assert len(served["items"]) == 3 and "i3" not in {i["item_id"] for i in served["items"]}
