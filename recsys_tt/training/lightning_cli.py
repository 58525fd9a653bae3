"""The training command line (LightningCLI): fit, validate, test; ``train.py`` at the repository root calls ``run``."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import ArgumentError
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from recsys_tt.cli import document_options, log_to_console, quiet_library_noise, user_errors
from recsys_tt.model.metrics import ranking_metrics
from recsys_tt.training.callbacks import ProgressLog
from recsys_tt.training.checkpoint_files import read_checkpoint
from recsys_tt.training.datamodule import RecDataModule
from recsys_tt.training.module import TwoTowerModule

log = logging.getLogger("recsys_tt.train")


class TwoTowerCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """fit, validate and test; offline scoring is scripts/score_offline.py (the module has no predict step)."""
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name != "predict"}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=True, help="Run `test` once fitting ends.")
        parser.add_argument("--test_on", type=Literal["best", "last"], default="best",
                            help="Test the checkpoint best_checkpoint kept (model selection on validation, as "
                                 "RecBole's early stopping does), or the final weights.")
        # Present whatever the config's callbacks: every run keeps its best validation checkpoint, which `test`
        # and the export use (best_checkpoint.monitor picks another metric).
        parser.add_lightning_class_args(ModelCheckpoint, "best_checkpoint")
        parser.set_defaults({"best_checkpoint.monitor": "val/ndcg@10", "best_checkpoint.mode": "max",
                             "best_checkpoint.filename": "best-{step}"})
        # Log files (a cluster job's output) get plain progress lines; a progress bar only where a terminal shows it.
        parser.add_lightning_class_args(ProgressLog, "progress_log")
        parser.set_defaults({"trainer.enable_progress_bar": sys.stderr.isatty()})
        parser.link_arguments("model.tower.backbone", "data.backbone")
        parser.link_arguments("data.num_items", "model.num_items", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """``seed_everything`` also seeds the data order and dropout unless ``data.seed``/``model.seed`` are given, so
        one option changes a run's seed (two differing seeds also stop Lightning when it logs the hparams)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        seed = config.get("seed_everything")
        if isinstance(seed, int) and not isinstance(seed, bool):
            for key in ("data.seed", "model.seed"):
                if config.get(key) is None:
                    config[key] = seed

    def before_fit(self) -> None:
        if isinstance(self.trainer.accelerator, CPUAccelerator) and str(self.trainer.precision).startswith("bf16") \
                and cpu_has_amx() is False:
            log.warning("Training in %s on a CPU without AMX, where bfloat16 matmuls are slower than float32: "
                        "--trainer.precision 32-true is faster here (results differ slightly; the configs' quoted "
                        "numbers are bf16-mixed).", self.trainer.precision)
        if self.datamodule.hparams.train_on_validation:
            log.info("data.train_on_validation: the validation items are trained on, so validation is skipped and "
                     "the final weights are tested (choose max_steps on a run without it).")
            self.trainer.limit_val_batches = 0
        monitor = self.config.fit.best_checkpoint.monitor
        logged = [f"val/{name}" for name in ranking_metrics(torch.zeros(1), self.model.hparams.eval_ks)]
        if monitor is not None and monitor not in logged:
            raise ValueError(f"--best_checkpoint.monitor {monitor} is not logged by this run; validation logs "
                             f"{', '.join(logged)} (set by --model.eval_ks).")

    def before_validate(self) -> None:
        self.datamodule.refuse_validation_if_trained_on()  # before Lightning restores the checkpoint

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        self._command_line = [str(a) for a in args] if isinstance(args, list) else sys.argv[1:]
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Lightning reads --ckpt_path here, before any hook, and a file it cannot load safely ends in its traceback
        (advising an unsafe load): read it our way first, so such a file is refused in one line. Lightning then puts
        the checkpoint's model settings over the command line's; the ``EVALUATION_SETTINGS`` given there win."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and path not in ("best", "last", "hpc", "registry"):
            read_checkpoint(path)
        given = {key: self.config[subcommand][key] for key in EVALUATION_SETTINGS
                 if any(arg == f"--{key}" or arg.startswith(f"--{key}=") for arg in self._command_line)}
        super()._parse_ckpt_path()
        for key, value in given.items():
            self.config[subcommand][key] = value

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except SIGTERMException:  # a scheduler's preemption: say where this run can resume
            last = Path(self.trainer.log_dir or ".") / "checkpoints" / "last.ckpt"
            log.error("Stopped by SIGTERM before the run finished; nothing was tested. Resume with --ckpt_path %s "
                      "(and the same config and options).", last)
            raise

    def after_fit(self) -> None:
        if self.config.fit.test_after_fit:
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=self._tested_checkpoint())
        run = self.trainer.log_dir
        if run and self.trainer.is_global_zero:
            which = "last" if self.datamodule.hparams.train_on_validation else "best"
            log.info("Run folder: %s (config.yaml, metrics.csv, curves.png, checkpoints/). Next, export its %s "
                     "checkpoint: python scripts/export_index.py --checkpoint %s --out exports/%s", run, which, run,
                     Path(run).parent.name)

    def _tested_checkpoint(self) -> str | None:
        """Path of the checkpoint to test; None tests the weights in memory (the final ones)."""
        if self.config.fit.test_on == "last" or self.datamodule.hparams.train_on_validation:
            return None
        best: ModelCheckpoint = self.config_init[self.subcommand]["best_checkpoint"]
        if not best.best_model_path:
            log.warning("No validation ran, so no best checkpoint exists: the final weights are tested.")
            return None
        log.info("Testing %s (%s = %.4f)", best.best_model_path, best.monitor, float(best.best_model_score))
        return best.best_model_path


class RunConfig(SaveConfigCallback):
    """Writes config.yaml into the run folder. A run without a logger (``test`` or ``validate`` with
    ``--trainer.logger false``) has none, and Lightning would write it into the working directory instead."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.logger is not None:
            super().setup(trainer, pl_module, stage)


EVALUATION_SETTINGS = ("model.tower.unseen_items", "model.tower.unseen_item_boost")
"""Model settings that change how a trained model ranks, not what it learnt: given on the command line of ``test`` or
``validate``, they apply to the --ckpt_path checkpoint (``scripts/sweep_unseen_boost.py``)."""


def cpu_has_amx(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU has AMX tiles for bfloat16 (Linux's /proc/cpuinfo flags); None where that cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split()}
    return "amx_bf16" in flags if flags else None


def main(args: list[str] | None = None, exit_on_error: bool = True) -> TwoTowerCLI:
    """The CLI on ``args`` (default: the command line). Without ``exit_on_error`` a bad argument raises
    ``ArgumentError`` instead of printing the whole usage and exiting."""
    log_to_console()
    quiet_library_noise()
    document_options()
    quiet = {"exit_on_error": False} if not exit_on_error else {}
    parser_kwargs = quiet | {name: quiet for name in TwoTowerCLI.subcommands()} if quiet else None
    return TwoTowerCLI(TwoTowerModule, RecDataModule, args=args, save_config_callback=RunConfig,
                       save_config_kwargs={"overwrite": True}, parser_kwargs=parser_kwargs)


def leave_process_group() -> None:
    """Destroys the DDP process group after a run that ended well. Lightning leaves it up, and a gloo group torn
    down by interpreter exit can abort the process (SIGABRT, "terminate called without an active exception") after
    the work is done. Not after a failure: a rank that waits in destroy while another died would hang."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def run() -> None:
    """main() for the command line: input errors as one line, and a SIGTERM (a scheduler's preemption) as a
    failure that says where to resume, not as success."""
    with user_errors():
        try:
            main(exit_on_error=False)
            leave_process_group()
        except ArgumentError as err:  # one line, not the 130 lines of usage jsonargparse prints before it
            subcommand = next((a for a in sys.argv[1:] if a in TwoTowerCLI.subcommands()), "fit")
            print(f"error: {err}\n(`{Path(sys.argv[0]).name} {subcommand} --help` lists the options; "
                  f"`--print_config` shows the values a config sets)", file=sys.stderr)
            sys.exit(2)
        except SIGTERMException:  # TwoTowerCLI said where to resume
            sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
    run()
