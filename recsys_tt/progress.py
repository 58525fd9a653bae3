"""Plain progress lines for log files: a cluster job's output is a file, where progress bars show nothing useful."""

from __future__ import annotations

import datetime
import logging
import time

import pytorch_lightning as pl

from recsys_tt.batches import target_count

log = logging.getLogger(__name__)


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class ProgressLog(pl.Callback):
    """Every ``every_s`` seconds of training, one line: step / total, loss, targets/s, elapsed and whole-run ETA.

    The ETA extrapolates the seconds per step since this fit started (validation included) to ``max_steps``.
    """

    def __init__(self, every_s: float = 60.0) -> None:
        if every_s <= 0:
            raise ValueError(f"progress_log.every_s must be positive, got {every_s}.")
        self.every_s = every_s
        self.started = self.last = 0.0
        self.first_step = self.targets = 0

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.started = self.last = time.monotonic()
        self.first_step, self.targets = trainer.global_step, 0

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        self.targets = self.targets + target_count(batch)  # read only when a line is due
        now = time.monotonic()
        if now - self.last < self.every_s or not trainer.is_global_zero:
            return
        self.last = now
        done, elapsed = trainer.global_step - self.first_step, now - self.started
        total = trainer.max_steps if trainer.max_steps > 0 else int(trainer.estimated_stepping_batches)
        loss = trainer.callback_metrics.get("train/loss")
        eta = elapsed / max(done, 1) * max(total - trainer.global_step, 0)
        log.info("step %d/%d (%.0f%%), loss %s, %.0f targets/s, elapsed %s, ETA %s", trainer.global_step, total,
                 100 * trainer.global_step / max(total, 1), "n/a" if loss is None else f"{float(loss):.4f}",
                 float(self.targets) / elapsed, _clock(elapsed), _clock(eta))
