"""TrainableEMA: validation, checkpoints and the final weights use the average; resumed runs train on unchanged."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch

from recsys_tt.training.ema import TrainableEMA
from recsys_tt.training.lightning_cli import main
from tests.helpers import train_args as _args

DECAY = 0.5
EMA = json.dumps({"class_path": "recsys_tt.training.ema.TrainableEMA", "init_args": {"decay": DECAY}})
RECORD = json.dumps({"class_path": "test_ema.RecordWeights"})


class RecordWeights(pl.Callback):
    """Copies of the trainable weights when training starts, after every optimizer step and when validating
    (listed after TrainableEMA, so it sees what validation sees)."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []
        self.validated: list[dict[str, torch.Tensor]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        self._record(pl_module)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.validated.append(_trainable(pl_module))

    def _record(self, pl_module: pl.LightningModule) -> None:
        self.weights.append(_trainable(pl_module))


def _trainable(module: pl.LightningModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def _average(weights: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The EMA written out step by step: start, then after step s keep min(decay, (1 + s) / (10 + s)) of it."""
    average = dict(weights[0])
    for step, current in enumerate(weights[1:], start=1):
        keep = min(DECAY, (1 + step) / (10 + step))
        average = {n: keep * average[n] + (1 - keep) * current[n] for n in average}
    return average


def _callback(cli, kind: type) -> pl.Callback:
    return next(c for c in cli.trainer.callbacks if isinstance(c, kind))


def test_validation_checkpoints_and_final_weights_hold_the_average(tmp_path, tiny_dataset, tiny_bert):
    cli = main(_args(tmp_path, tiny_dataset, tiny_bert, 4, "--model.lr", "0.05", "--test_on", "last",
                     "--trainer.callbacks+", EMA, "--trainer.callbacks+", RECORD))
    recorded = _callback(cli, RecordWeights)
    weights = recorded.weights
    assert len(weights) == 5
    expected, raw = _average(weights), weights[-1]
    ckpt = torch.load(tmp_path / "ml100k_minilm/version_0/checkpoints/last.ckpt", weights_only=True)
    final = _trainable(cli.model)
    saved_raw = ckpt["callbacks"][_callback(cli, TrainableEMA).state_key]["raw"]
    lora = [n for n in expected if "lora_B" in n]
    assert lora and not torch.allclose(expected[lora[0]], raw[lora[0]])  # the average is not the last step
    for name in expected:
        assert torch.allclose(ckpt["state_dict"][name], expected[name], atol=1e-6), name
        assert torch.equal(saved_raw[name], raw[name]), name
        assert torch.allclose(final[name], expected[name], atol=1e-6), name
        assert torch.allclose(recorded.validated[-1][name], expected[name], atol=1e-6), name  # at step 4


@pytest.mark.filterwarnings("ignore:.*exists and is not empty")  # the test reruns into its own run folder
def test_resumed_run_matches_uninterrupted_run(tmp_path, tiny_dataset, tiny_bert):
    full = main(_args(tmp_path / "full", tiny_dataset, tiny_bert, 8, "--trainer.callbacks+", EMA))
    kill = '{"class_path": "test_train.StopAtStep", "init_args": {"step": 5}}'
    main(_args(tmp_path / "cut", tiny_dataset, tiny_bert, 8, "--trainer.callbacks+", EMA,
               "--trainer.callbacks+", kill, "--test_after_fit", "false"))
    last = tmp_path / "cut/ml100k_minilm/version_0/checkpoints/last.ckpt"
    resumed = main(_args(tmp_path / "cut", tiny_dataset, tiny_bert, 8, "--trainer.callbacks+", EMA,
                         "--ckpt_path", str(last)))
    a, b = _trainable(full.model), _trainable(resumed.model)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    expected = float(full.trainer.callback_metrics["test/ndcg@10"])
    assert float(resumed.trainer.callback_metrics["test/ndcg@10"]) == pytest.approx(expected, abs=1e-5)


def test_nonsense_decay_is_refused():
    with pytest.raises(ValueError, match="decay must be in"):
        TrainableEMA(decay=1.0)
