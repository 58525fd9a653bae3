"""Retraining from serving logs inside the simulator: fine-tune the latest model of a loop on its log (``train.py fit``
in a subprocess), export it, and serve the next round with it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from recsys_tt.export.folder import ExportFolder
from recsys_tt.model.loss import effective_sample_share
from recsys_tt.offline.policies import RetrainingLoop, slug
from recsys_tt.training.checkpoint_files import read_checkpoint
from recsys_tt.training.export import export_model
from recsys_tt.training.logged_clicks import read_clicks


class Retrainer:
    """Fine-tunes the latest model of one loop on its log and exports it: the ``retrain`` of ``run_policy``."""

    def __init__(self, loop: RetrainingLoop, export: ExportFolder, checkpoint: Path, config: Path, log_dir: Path,
                 root: Path, steps: int, logs_share: float, extra: list[str]) -> None:
        self.loop, self.export, self.checkpoint, self.config = loop, export, checkpoint, config
        self.log_dir, self.root, self.steps, self.logs_share, self.extra = log_dir, root, steps, logs_share, extra
        self.weight_ess: list[float] = []  # per fine-tuning: the effective sample share of its click weights

    def command(self, name: str) -> list[str]:
        return [sys.executable, "-m", "recsys_tt.training.lightning_cli", "fit", "--config", str(self.config),
                "--model.init_checkpoint", str(self.checkpoint), "--data.logs", str(self.log_dir),
                "--data.logs_share", str(self.logs_share), *self.loop.train_args(),
                "--trainer.max_steps", str(self.steps), "--model.warmup_steps", str(max(self.steps // 10, 1)),
                "--trainer.limit_val_batches", "0", "--test_after_fit", "false",
                "--best_checkpoint.monitor", "null", "--best_checkpoint.save_last", "true",
                "--trainer.logger.init_args.save_dir", str(self.root / "runs"),
                "--trainer.logger.init_args.name", name, "--trainer.logger.init_args.version", "0", *self.extra]

    def __call__(self, round_index: int) -> ExportFolder:
        name = f"{slug(self.loop.name)}_round{round_index + 1}"
        if read_clicks(self.log_dir).empty:
            print(f"  {name}: no clicks logged yet, so the model stays as it is", flush=True)
            return self.export
        began = time.perf_counter()
        done = subprocess.run(self.command(name), capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"Fine-tuning {name} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
        self.checkpoint = self.root / "runs" / name / "version_0" / "checkpoints" / "last.ckpt"
        self.weight_ess.append(float(effective_sample_share(read_checkpoint(self.checkpoint)["click_weight"])))
        self.export = ExportFolder.load(export_model(self.checkpoint, self.root / "exports" / name,
                                                     report_users=100, overwrite=True))
        print(f"  {name}: fine-tuned {self.steps} steps (click weights' effective sample share "
              f"{self.weight_ess[-1]:.3f}) and exported in {time.perf_counter() - began:.0f}s", flush=True)
        return self.export
