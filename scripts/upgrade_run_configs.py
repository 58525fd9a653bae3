"""Rewrite the class paths that saved run configs name from before recsys_tt had its floor folders.

    python scripts/upgrade_run_configs.py runs/ml100k_minilm          # every config.yaml below the folder
    python scripts/upgrade_run_configs.py runs/ml1m/version_0/config.yaml

A run's ``config.yaml`` (which ``train.py fit --config`` and ``scripts/simulate_retraining.py`` read again) names its
callbacks and FSDP policy by import path, e.g. ``recsys_tt.plots.PlotCurves``, now
``recsys_tt.training.callbacks.PlotCurves``. Checkpoints and export folders need no rewrite: they hold no class paths.
Each changed file is replaced atomically and its original kept beside it as ``config.yaml.orig``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from recsys_tt.cli import run

MOVED = {
    "recsys_tt.plots.PlotCurves": "recsys_tt.training.callbacks.PlotCurves",
    "recsys_tt.progress.ProgressLog": "recsys_tt.training.callbacks.ProgressLog",
    "recsys_tt.ema.TrainableEMA": "recsys_tt.training.ema.TrainableEMA",
    "recsys_tt.step_timer.StepTimer": "recsys_tt.training.step_timer.StepTimer",
    "recsys_tt.fsdp.transformer_blocks": "recsys_tt.training.fsdp.transformer_blocks",
}
_OLD = re.compile(r"\b(" + "|".join(re.escape(path) for path in MOVED) + r")\b")


def upgrade_text(text: str) -> str:
    """The config text with every moved class path replaced by its new one."""
    return _OLD.sub(lambda match: MOVED[match[1]], text)


def upgrade_file(path: Path) -> bool:
    """Rewrites one config in place (the original kept as ``.orig``); False when nothing needed changing."""
    text = path.read_text()
    new = upgrade_text(text)
    if new == text:
        return False
    shutil.copy2(path, path.with_name(path.name + ".orig"))
    staged = path.with_name(path.name + ".new")
    staged.write_text(new)
    os.replace(staged, path)
    return True


def main(path: str) -> None:
    """Upgrade a run's config.yaml, or every config.yaml below a folder.

    Args:
        path: a config.yaml, or a folder (e.g. runs/) searched for them.
    """
    target = Path(path)
    if not target.exists():
        raise FileNotFoundError(f"{target} does not exist; give a run folder or its config.yaml.")
    configs = [target] if target.is_file() else sorted(target.rglob("config.yaml"))
    changed = [config for config in configs if upgrade_file(config)]
    for config in changed:
        print(f"upgraded {config} (original: {config.name}.orig)")
    print(f"{len(changed)} of {len(configs)} config(s) named old class paths.")


if __name__ == "__main__":
    run(main)
