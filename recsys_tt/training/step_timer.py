"""Timing training for benchmarks and GPU checks: a callback that times steps after a warm-up, counts a step's FLOPs
and reads peak memory, and a short timed ``train.py fit`` that runs in a process of its own."""

from __future__ import annotations

import json
import multiprocessing
import resource
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.flop_counter import FlopCounterMode

from recsys_tt.training.sampling import target_count


class StepTimer(pl.Callback):
    """Counts training steps, targets and seconds after ``warmup`` steps, the FLOPs per target of the last warm-up
    step (matrix products, forward and backward, as ``torch.utils.flop_counter`` counts them) and peak memory.

    The device is synchronised only where timing starts and ends, so the timed steps queue on a GPU as they do in
    any run: a per-step synchronisation would hide whatever a step makes the host wait for.
    """

    def __init__(self, warmup: int = 3) -> None:
        if warmup < 1:
            raise ValueError(f"StepTimer needs warmup >= 1 (its last warm-up step is the one counted), got {warmup}.")
        self.warmup, self.steps, self.seconds = warmup, 0, 0.0
        self.targets: torch.Tensor | int = 0
        self.started: float | None = None
        self.flops_per_target: float | None = None
        self._counter: FlopCounterMode | None = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup - 1:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
        elif trainer.global_step == self.warmup:
            self._synchronize(module)
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops_per_target = self._counter.get_total_flops() / max(int(target_count(batch)), 1)
            self._counter = None
        if self.started is not None and not self.seconds:
            self.steps += 1
            self.targets = self.targets + target_count(batch)
            if trainer.global_step >= trainer.max_steps > 0:
                self._stop(module)

    def on_train_end(self, trainer, module) -> None:
        if self.started is not None and not self.seconds:  # stopped before max_steps
            self._stop(module)

    def _stop(self, module: pl.LightningModule) -> None:
        self._synchronize(module)  # CUDA runs ahead of Python: the time counts once the queued kernels are done
        self.seconds = time.perf_counter() - self.started
        self.targets = int(self.targets)

    @staticmethod
    def _synchronize(module: pl.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def report(self) -> dict[str, float]:
        """Steps/s, targets/s, TFLOP/s (FLOPs per target x targets/s), peak CUDA memory (GB, on a GPU) and peak RSS
        (GB) of this process."""
        if not self.steps or not self.seconds:
            raise RuntimeError(f"No steps were timed: the run needs more than {self.warmup} warm-up steps.")
        out = {"steps_per_s": self.steps / self.seconds, "targets_per_s": self.targets / self.seconds,
               "peak_rss_gb": peak_rss_gb()}
        if self.flops_per_target is not None:
            out |= {"gflop_per_target": self.flops_per_target / 1e9,
                    "tflop_per_s": self.flops_per_target * out["targets_per_s"] / 1e12}
        if torch.cuda.is_available():
            out["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1024**3
        return out


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def timed_fit(args: list[str], steps: int, warmup: int, out: str, test: bool = False) -> dict:
    """``train.py fit`` with ``args`` (a config, then overrides) for ``warmup + steps`` steps without validation, the
    last ``steps`` timed (``StepTimer.report``), and ``fit_seconds``, the whole fit's wall-clock time; with ``test``,
    then the full test (every logged ``test*/`` metric as ``test_<name>``, e.g. ``test_ndcg@10``, and
    ``test_seconds``) and the weights saved as ``out/timed.ckpt``."""
    from recsys_tt.training.lightning_cli import main

    timer = json.dumps({"class_path": "recsys_tt.training.step_timer.StepTimer", "init_args": {"warmup": warmup}})
    started = time.perf_counter()
    cli = main(["fit", "--config", *args, "--test_after_fit", "false", "--trainer.enable_progress_bar", "false",
                "--trainer.max_steps", str(warmup + steps), "--trainer.limit_val_batches", "0",
                "--trainer.logger.init_args.save_dir", out, f"--trainer.callbacks+={timer}"])
    numbers = next(c for c in cli.trainer.callbacks if isinstance(c, StepTimer)).report()
    numbers |= {"fit_seconds": time.perf_counter() - started, "precision": str(cli.trainer.precision),
                "batch_windows": cli.datamodule.hparams.batch_size,
                "gradient_checkpointing": cli.model.model.config.gradient_checkpointing}
    if test:
        started = time.perf_counter()
        tested = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
        numbers |= {name.replace("/", "_", 1): value for name, value in tested.items()}
        numbers |= {"test_seconds": time.perf_counter() - started, "peak_rss_gb": peak_rss_gb()}
        cli.trainer.save_checkpoint(Path(out) / "timed.ckpt")
    return numbers


def in_own_process(function, *args, timeout: float | None = None) -> dict:
    """``function(*args)`` in a fresh (spawned) process, e.g. one run per process group or memory reading; its
    result, or ``{"error": ...}`` when it failed (its traceback is printed) or outran ``timeout`` seconds."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_put, args=(queue, function, args))
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.terminate()
        process.join()
        return {"error": f"stopped after {timeout:.0f} s"}
    return queue.get() if not queue.empty() else {"error": f"failed with exit code {process.exitcode}"}


def _put(queue, function, args) -> None:
    queue.put(function(*args))
