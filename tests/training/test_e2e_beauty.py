"""End to end on the real MiniLM and a slice of Amazon Beauty: the shipped config's design for items never trained on
(item adapter frozen, a text-only softmax, cold items placed by their text and boosted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_tt.data.amazon import ensure_amazon_beauty
from recsys_tt.export.folder import ExportFolder
from recsys_tt.training.export import export_model
from recsys_tt.training.lightning_cli import main

BEAUTY = Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon-beauty"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not BEAUTY.is_dir(), reason=f"{BEAUTY} is not on this machine")]


def _slice(tmp_path: Path, users: int) -> dict[str, str]:
    """The first ``users`` users of Amazon Beauty and the products they reviewed."""
    folder = ensure_amazon_beauty(BEAUTY, tmp_path / "cache")
    inter = pd.read_csv(folder / "interactions.csv", dtype=str)
    inter = inter[inter["user_id"].isin(inter["user_id"].drop_duplicates().iloc[:users])]
    items = pd.read_csv(folder / "items.csv", dtype=str)
    paths = {"interactions": tmp_path / "interactions.csv", "items": tmp_path / "items.csv"}
    inter.to_csv(paths["interactions"], index=False)
    items[items["item_id"].isin(inter["item_id"])].to_csv(paths["items"], index=False)
    return {k: str(v) for k, v in paths.items()}


def test_the_beauty_config_trains_users_alone_and_places_cold_items_by_boosted_text(tmp_path):
    data = _slice(tmp_path, 200)
    cli = main(["fit", "--config", "configs/beauty_minilm.yaml", "--data.dataset", "files",
                "--data.interactions", data["interactions"], "--data.items", data["items"], "--data.cold_items", "0.2",
                "--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--trainer.log_every_n_steps", "1",
                "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false",
                "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    logged = pd.read_csv(Path(cli.trainer.log_dir) / "metrics.csv")
    for name in ("val_cold/ndcg@10", "val_warm/ndcg@10", "test_cold/ndcg@10", "test_warm/ndcg@10"):
        assert logged[name].notna().any() and (logged[name].dropna() >= 0).all()
    assert (logged["train/text_only_loss"].dropna() > 0).any()
    lora_b = {n: p for n, p in cli.model.named_parameters() if "lora_B" in n}
    assert all(torch.count_nonzero(p) == 0 for n, p in lora_b.items() if ".item." in n)  # frozen at its start
    assert any(torch.count_nonzero(p) > 0 for n, p in lora_b.items() if ".user." in n)
    export = ExportFolder.load(export_model(cli.trainer.ckpt_path, tmp_path / "export"))
    unseen = export.items["train_count"].to_numpy() == 0
    assert unseen.sum() >= int(cli.datamodule.cold_item_mask.sum())
    assert np.allclose(export.vectors[unseen], 1.1 * export.text_vectors[unseen], atol=1e-4)
    assert not export.meta["normalized"]
