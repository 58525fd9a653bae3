"""Training callbacks: plain progress lines for log files (a cluster job's output is a file, where progress bars show
nothing useful) and the training curves written when fitting ends."""

from __future__ import annotations

import datetime
import logging
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities import rank_zero_only

from recsys_tt.plots import plot_curves
from recsys_tt.training.sampling import target_count

log = logging.getLogger(__name__)


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class ProgressLog(pl.Callback):
    """Every ``every_s`` seconds of training, one line: step / total, loss, targets/s, elapsed and whole-run ETA;
    after each validation, one line with its NDCG@10 and Recall@10 and the best so far.

    The ETA extrapolates the seconds per step since this fit started (validation included) to ``max_steps``; once a
    validation has run, the line adds what testing all users would take at its pace.
    """

    def __init__(self, every_s: float = 60.0) -> None:
        if every_s <= 0:
            raise ValueError(f"progress_log.every_s must be positive, got {every_s}.")
        self.every_s = every_s
        self.started = self.last = 0.0
        self.first_step = self.targets = 0
        self.best: tuple[float, int] | None = None  # (validation NDCG@10, step)
        self.validation_started = 0.0
        self.seconds_per_user: float | None = None  # of the last validation
        self.test_users: int | None = None

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
        log.info("step %d/%d (%.0f%%), loss %s, %.0f targets/s, elapsed %s, ETA %s%s", trainer.global_step, total,
                 100 * trainer.global_step / max(total, 1), "n/a" if loss is None else f"{float(loss):.4f}",
                 float(self.targets) / elapsed, _clock(elapsed), _clock(eta), self._test_estimate(trainer))

    def _test_estimate(self, trainer: pl.Trainer) -> str:
        if self.seconds_per_user is None or getattr(trainer, "datamodule", None) is None:
            return ""
        if self.test_users is None:
            self.test_users = len(trainer.datamodule.test_dataloader().dataset)
        return f", then about {_clock(self.seconds_per_user * self.test_users)} to test {self.test_users} users"

    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.validation_started = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if trainer.sanity_checking or not trainer.is_global_zero or "val/ndcg@10" not in metrics:
            return
        users = sum(len(loader.dataset) for loader in _loaders(trainer.val_dataloaders))
        self.seconds_per_user = (time.monotonic() - self.validation_started) / max(users, 1)
        ndcg, step = float(metrics["val/ndcg@10"]), trainer.global_step
        if self.best is None or ndcg > self.best[0]:
            self.best = (ndcg, step)
        recall = metrics.get("val/recall@10")
        log.info("validation at step %d: NDCG@10 %.4f%s (best %.4f at step %d)", step, ndcg,
                 "" if recall is None else f", Recall@10 {float(recall):.4f}", *self.best)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        stopper = trainer.early_stopping_callback
        if stopper is None or not trainer.is_global_zero or trainer.global_step >= trainer.max_steps > 0 \
                or stopper.wait_count < stopper.patience:
            return
        log.info("Stopped early at step %d of %d: %s has not improved on %.4f in %d validations "
                 "(EarlyStopping.patience).", trainer.global_step, trainer.max_steps, stopper.monitor,
                 float(stopper.best_score), stopper.wait_count)


def _loaders(loaders) -> list:
    return loaders if isinstance(loaders, list) else [loaders]


class PlotCurves(pl.Callback):
    """Writes ``curves.png`` into the CSV logger's folder at the end of ``fit``."""

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = trainer.logger
        if not isinstance(logger, CSVLogger):  # e.g. fast_dev_run's dummy logger, which answers every attribute
            return
        logger.save()
        if not Path(logger.experiment.metrics_file_path).exists():  # a run shorter than log_every_n_steps
            log.info("No metrics were logged, so no curves are plotted.")
            return
        path = plot_curves(logger.experiment.metrics_file_path, Path(logger.log_dir) / "curves.png")
        log.info("Training curves written to %s", path)
