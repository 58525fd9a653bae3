"""Exponential moving average of the trainable weights, which validation, test and checkpoints use."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.strategies import FSDPStrategy


class TrainableEMA(Callback):
    """Keeps an EMA of the trainable weights (LoRA adapters, id vectors, temperature) only.

    Lightning's WeightAveraging copies the whole module, frozen backbone and buffers included; here the average
    costs one copy of the adapters. Validation runs with the average, every checkpoint's ``state_dict`` holds it
    (so ``test``, the export and serving use it) and keeps the raw weights in this callback's state, from which a
    resumed run trains on exactly as before.
    """

    def __init__(self, decay: float = 0.98) -> None:
        """Args:
            decay: weight of the old average at each step; early steps use min(decay, (1 + step) / (10 + step)),
                so the start of training does not linger in the average.
        """
        if not 0.0 < decay < 1.0:
            raise ValueError(f"TrainableEMA decay must be in (0, 1), got {decay}.")
        self.decay = decay
        self.average: dict[str, torch.Tensor] = {}
        self._resumed_raw: dict[str, torch.Tensor] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy, FSDPStrategy):
            raise ValueError("TrainableEMA averages whole parameters, but FSDP shards them; remove the callback "
                             "or train with DDP.")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a resume the module holds the checkpoint's state_dict, which is the average; the raw weights come
        # from this callback's state.
        self.average = {name: p.detach().clone() for name, p in _trainable(pl_module)}
        with torch.no_grad():
            for name, p in _trainable(pl_module):
                if name in self._resumed_raw:
                    p.copy_(self._resumed_raw[name])
        self._resumed_raw = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        step = trainer.global_step
        weight = 1.0 - min(self.decay, (1 + step) / (10 + step))
        names, params = zip(*_trainable(pl_module))
        with torch.no_grad():  # one fused call: a step's hundreds of adapter tensors would cost a launch each
            torch._foreach_lerp_([self.average[n] for n in names], [p.detach() for p in params], weight)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.average:  # filled only while fitting: sanity checks and `test` evaluate the weights as they are
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.average:
            self._swap(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap(pl_module)  # what stays in memory (and `test_on: last`) is the average
        self.average = {}

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if not self.average:
            return
        state = checkpoint["state_dict"]
        checkpoint["callbacks"].setdefault(self.state_key, {})["raw"] = {
            name: state[name].clone() for name in self.average}
        state.update({name: value.clone() for name, value in self.average.items()})

    def load_state_dict(self, state_dict: dict) -> None:
        self._resumed_raw = state_dict.get("raw", {})

    def _swap(self, pl_module: pl.LightningModule) -> None:
        with torch.no_grad():
            for name, p in _trainable(pl_module):
                raw = p.detach().clone()
                p.copy_(self.average[name])
                self.average[name].copy_(raw)


def _trainable(module: pl.LightningModule):
    return ((name, p) for name, p in module.named_parameters() if p.requires_grad)
