"""data.train_on_validation: a final fit that also trains on each user's validation item."""

from __future__ import annotations

import pytest
import torch

from recsys_tt.training.checkpoint_files import resolve_checkpoint
from recsys_tt.training.export import export_model
from recsys_tt.training.lightning_cli import main
from tests.helpers import train_args


def test_a_fit_on_the_validation_items_trains_on_them_skips_validation_and_tests_the_final_weights(
        tmp_path, tiny_dataset, tiny_bert):
    cli = main(train_args(tmp_path, tiny_dataset, tiny_bert, 4, "--data.train_on_validation", "true"))
    data = cli.datamodule
    split = data.split
    assert [seq.tolist() for seq in data.train_sequences] == \
        [split.history(user, "test").tolist() for user in range(len(split.train))]
    assert sum(map(len, data.train_sequences)) == sum(map(len, split.train)) + int((split.valid >= 0).sum())
    metrics = cli.trainer.callback_metrics
    assert "test/ndcg@10" in metrics
    assert not [name for name in metrics if name.startswith("val")]
    run = tmp_path / "ml100k_minilm/version_0"
    assert not list((run / "checkpoints").glob("best-*"))  # nothing validated, so the final weights were tested
    last = run / "checkpoints/last.ckpt"
    assert resolve_checkpoint(run) == last  # what export_index.py --checkpoint RUN exports
    assert torch.load(last, weights_only=True)["global_step"] == 4
    card = (export_model(run, tmp_path / "export") / "README.md").read_text()
    assert "also trained on as a final fit with settings chosen on validation" in card

    with pytest.raises(ValueError, match=r"trains on the validation items \(data.train_on_validation\)"):
        main(["validate", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints/last.ckpt"),
              "--trainer.logger", "false", "--trainer.callbacks", "[]"])
