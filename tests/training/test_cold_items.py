"""data.cold_items: a share of the catalog held out of training, scored from text alone, reported apart in test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recsys_tt.training.lightning_cli import main
from tests.helpers import train_args


@pytest.mark.parametrize("negatives", ["catalog", "batch"])
def test_cold_items_are_never_trained_on_and_test_reports_them_apart(tmp_path, tiny_dataset, tiny_bert, negatives):
    cli = main(train_args(tmp_path, tiny_dataset, tiny_bert, 4, "--data.cold_items", "0.25",
                          "--model.loss.negatives", negatives, "--model.id_lr", "0.5"))
    data, tower = cli.datamodule, cli.model.model
    cold = data.cold_item_mask
    assert int(cold.sum()) == 3  # a quarter of the 12 items
    assert not any(cold.numpy()[seq].any() for seq in data.train_sequences)
    assert any(cold.numpy()[seq].any() for seq in data.split.train)  # so the filter did remove some
    assert not tower.seen_items[cold].any() and tower.seen_items[~cold].any()
    assert torch.count_nonzero(tower.item_ids.weight[cold]) == 0  # their id vectors never moved
    assert torch.count_nonzero(tower.item_ids.weight[~cold]) > 0
    metrics = cli.trainer.callback_metrics
    targets = torch.as_tensor(data.split.test)
    is_cold = cold[targets[targets >= 0]]
    n_cold, n_warm = int(is_cold.sum()), int((~is_cold).sum())
    assert n_cold and n_warm
    for name in ("ndcg@10", "recall@10"):
        both = n_cold * metrics[f"test_cold/{name}"] + n_warm * metrics[f"test_warm/{name}"]
        assert float(both / (n_cold + n_warm)) == pytest.approx(float(metrics[f"test/{name}"]), abs=1e-5)


def test_a_cold_share_outside_zero_to_one_is_refused(tmp_path, tiny_dataset, tiny_bert):
    with pytest.raises(ValueError, match=r"data.cold_items is a share of the catalog in \[0, 1\), got 1.0"):
        main(train_args(tmp_path, tiny_dataset, tiny_bert, 1, "--data.cold_items", "1.0"))


def test_the_export_holds_cold_items_as_add_items_would_place_them(tmp_path, tiny_dataset, tiny_bert):
    import numpy as np
    import pandas as pd
    import torch

    from recsys_tt.export.catalog import add_items
    from recsys_tt.export.folder import ExportFolder
    from recsys_tt.training.export import export_model

    cli = main(train_args(tmp_path, tiny_dataset, tiny_bert, 4, "--data.cold_items", "0.25", "--model.id_lr", "0.5"))
    cold = cli.datamodule.cold_item_mask.numpy()
    export = ExportFolder.load(export_model(cli.trainer.ckpt_path, tmp_path / "export"))
    assert (export.items["train_count"].to_numpy()[cold] == 0).all()
    # No trained id vector: the one their text predicts, from the trained items' text and id vectors.
    model = export.encoder.model
    predicted = torch.nn.functional.normalize(torch.from_numpy(export.text_vectors[cold]) + model.item_ids.weight[cold],
                                              dim=-1)
    assert np.allclose(export.vectors[cold], predicted.detach().numpy(), atol=1e-5)
    assert not np.allclose(export.vectors[cold], export.text_vectors[cold], atol=1e-3)
    assert not np.allclose(export.vectors[~cold], export.text_vectors[~cold], atol=1e-3)
    # The same items again, as new ones from their text: the vectors that the test ranked.
    again = pd.read_csv(tiny_dataset["items"]).iloc[np.flatnonzero(cold)]
    again.assign(item_id="new-" + again["item_id"].astype(str)).to_csv(tmp_path / "again.csv", index=False)
    add_items(export.folder, tmp_path / "again.csv")
    extended = ExportFolder.load(export.folder)
    assert np.allclose(extended.vectors[-int(cold.sum()):], export.vectors[cold], atol=1e-5)


def test_the_text_only_softmax_trains_the_towers_to_rank_by_text(tmp_path, tiny_dataset, tiny_bert):
    import pandas as pd

    def run(name: str, weight: str) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
        cli = main(train_args(tmp_path / name, tiny_dataset, tiny_bert, 3, "--model.loss.negatives", "catalog",
                              "--model.loss.text_only", weight))
        metrics = pd.read_csv(Path(cli.trainer.log_dir) / "metrics.csv")
        return metrics, {n: p.detach().clone() for n, p in cli.model.named_parameters() if "lora_B" in n}

    with_text, trained = run("text_only", "1.0")
    logged = with_text["train/text_only_loss"].dropna()
    assert len(logged) == 3 and (logged > 0).all()
    without, plain = run("plain", "0.0")
    assert "train/text_only_loss" not in without
    assert any(not torch.allclose(trained[n], plain[n]) for n in plain)  # same seed and data: only the term differs


def test_cold_items_placed_by_text_and_boosted_score_so_in_test_export_and_add_items(tmp_path, tiny_dataset, tiny_bert):
    import numpy as np
    import pandas as pd

    from recsys_tt.export.catalog import add_items
    from recsys_tt.export.folder import ExportFolder
    from recsys_tt.training.export import export_model

    cli = main(train_args(tmp_path, tiny_dataset, tiny_bert, 4, "--data.cold_items", "0.25", "--model.id_lr", "0.5",
                          "--model.tower.unseen_items", "text", "--model.tower.unseen_item_boost", "0.5"))
    cold = cli.datamodule.cold_item_mask.numpy()
    export = ExportFolder.load(export_model(cli.trainer.ckpt_path, tmp_path / "export"))
    unseen = export.items["train_count"].to_numpy() == 0  # the cold items and any item only val or test holds
    assert cold.any() and not cold[~unseen].any()
    assert np.allclose(export.vectors[unseen], 1.5 * export.text_vectors[unseen], atol=1e-5)
    assert np.allclose(np.linalg.norm(export.vectors[~unseen], axis=1), 1, atol=1e-5)
    assert export.meta["normalized"] is False
    again = pd.read_csv(tiny_dataset["items"]).iloc[np.flatnonzero(cold)]
    again.assign(item_id="new-" + again["item_id"].astype(str)).to_csv(tmp_path / "again.csv", index=False)
    add_items(export.folder, tmp_path / "again.csv")
    assert np.allclose(ExportFolder.load(export.folder).vectors[-int(cold.sum()):], export.vectors[cold], atol=1e-5)


def test_a_negative_unseen_item_boost_is_refused():
    from recsys_tt.model.towers import TowerConfig

    with pytest.raises(ValueError, match="unseen_item_boost must be >= 0"):
        TowerConfig(unseen_item_boost=-0.1)
