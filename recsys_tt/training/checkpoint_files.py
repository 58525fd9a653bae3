"""Finding and safely reading train.py checkpoint files (no model code: the module and the export both use it)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the best-validation checkpoint of a run folder (``runs/NAME/version_N``) or of the
    newest version of ``runs/NAME``; a run trained on its validation items has none, and its last checkpoint."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint or run folder at {path}.")
    if path.is_file():
        return path
    versions = [p for p in path.glob("version_*") if p.name.removeprefix("version_").isdigit()]
    newest = max(versions, key=lambda p: int(p.name.removeprefix("version_")), default=path)
    run = path if (path / "checkpoints").is_dir() else newest
    best = sorted((run / "checkpoints").glob("best-*.ckpt"))
    last = run / "checkpoints" / "last.ckpt"
    if not best and last.is_file() and run_data_settings(run).get("train_on_validation"):
        return last  # such a run never validates: its final weights are the model
    if len(best) != 1:
        raise FileNotFoundError(f"{run} holds {len(best)} best-validation checkpoints (checkpoints/best-*.ckpt); "
                                "pass the checkpoint file itself.")
    return best[0]


def run_data_settings(run: Path) -> dict:
    """The ``data`` section of a run folder's config.yaml ({} where the run wrote none)."""
    config = run / "config.yaml"
    return ((yaml.safe_load(config.read_text()) or {}).get("data") or {}) if config.is_file() else {}


def run_folder(checkpoint: str | Path) -> Path:
    """The train.py run a checkpoint file belongs to (``runs/NAME/version_N``: config.yaml, metrics.csv)."""
    return Path(checkpoint).resolve().parent.parent


def read_checkpoint(path: str | Path) -> dict:
    """A train.py checkpoint's contents, read without unpickling code; refuses other files with what to pass."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}; resolve_checkpoint finds one in a run folder.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises a different type per kind of damage and advises weights_only=False
        raise ValueError(f"{path} is not a checkpoint torch can read safely ({type(error).__name__}); pass a .ckpt "
                         "file written by train.py.") from None
    needed = ("state_dict", "hyper_parameters", "datamodule_hyper_parameters")
    if not isinstance(ckpt, dict) or any(key not in ckpt for key in needed):
        raise ValueError(f"{path} is not a recsys_tt training checkpoint (it lacks {needed}).")
    return ckpt
