"""A callback that times training steps after a warm-up and reads peak memory, for benchmarks and GPU checks."""

from __future__ import annotations

import resource
import time

import pytorch_lightning as pl
import torch


class StepTimer(pl.Callback):
    """Counts training steps, targets and seconds after ``warmup`` steps, and the run's peak memory."""

    def __init__(self, warmup: int = 3) -> None:
        self.warmup, self.steps, self.targets, self.seconds = warmup, 0, 0, 0.0
        self.started: float | None = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self._synchronize(module)
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.started is not None:
            self._synchronize(module)  # CUDA runs ahead of Python; count a step once its kernels are done
            self.steps += 1
            self.targets += int((batch["positive"] >= 0).sum())
            self.seconds = time.perf_counter() - self.started

    @staticmethod
    def _synchronize(module: pl.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def report(self) -> dict[str, float]:
        """Steps/s, targets/s, peak CUDA memory (GB, when on a GPU) and peak RSS (GB) of this process."""
        if not self.steps:
            raise RuntimeError(f"No steps were timed: the run needs more than {self.warmup} warm-up steps.")
        out = {"steps_per_s": self.steps / self.seconds, "targets_per_s": self.targets / self.seconds,
               "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}
        if torch.cuda.is_available():
            out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1024**3
        return out
