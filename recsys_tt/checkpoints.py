"""Rebuilding a trained model and its data from a training checkpoint (which holds only trainable weights)."""

from __future__ import annotations

from pathlib import Path

import torch

from recsys_tt.datamodule import RecDataModule
from recsys_tt.encoder import autocast_dtype
from recsys_tt.loss import LossConfig
from recsys_tt.module import TwoTowerModule
from recsys_tt.text import TextTemplates
from recsys_tt.towers import TowerConfig, load_trainable, sub_state


def _public(params: dict) -> dict:
    return {k: v for k, v in params.items() if not k.startswith("_")}


def build_module(hparams: dict) -> TwoTowerModule:
    """A TwoTowerModule from the hyperparameters a checkpoint or export recorded (configs as plain dicts)."""
    hp = _public(hparams)
    hp["tower"], hp["loss"] = TowerConfig(**hp["tower"]), LossConfig(**hp["loss"])
    hp["eval_ks"] = tuple(hp["eval_ks"])
    return TwoTowerModule(**hp)


def build_datamodule(hparams: dict) -> RecDataModule:
    hp = _public(hparams)
    hp.pop("user_input", None)  # recorded by checkpoints from before it became the model's setting alone
    hp["templates"] = TextTemplates(**hp["templates"])
    return RecDataModule(**hp)


def load_trainable_module(module: TwoTowerModule, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Loads a checkpoint's trainable weights: the towers' (``model.*``) and the loss's (``loss.*``: temperature)."""
    load_trainable(module.model, sub_state(state, "model."), source)
    module.loss.load_state_dict(sub_state(state, "loss."))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or the best-validation checkpoint of a run folder (``runs/NAME/version_N``) or of the
    newest version of ``runs/NAME``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint or run folder at {path}.")
    if path.is_file():
        return path
    versions = [p for p in path.glob("version_*") if p.name.removeprefix("version_").isdigit()]
    newest = max(versions, key=lambda p: int(p.name.removeprefix("version_")), default=path)
    run = path if (path / "checkpoints").is_dir() else newest
    best = sorted((run / "checkpoints").glob("best-*.ckpt"))
    if len(best) != 1:
        raise FileNotFoundError(f"{run} holds {len(best)} best-validation checkpoints (checkpoints/best-*.ckpt); "
                                "pass the checkpoint file itself.")
    return best[0]


def load_checkpoint(path: str | Path) -> tuple[TwoTowerModule, RecDataModule]:
    """The trained module (eval mode, item tokens attached) and the datamodule of a train.py checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}; resolve_checkpoint finds one in a run folder.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises a different type per kind of damage and advises weights_only=False
        raise ValueError(f"{path} is not a checkpoint torch can read safely ({type(error).__name__}); pass a .ckpt "
                         "file written by train.py.") from None
    needed = ("state_dict", "hyper_parameters", "datamodule_hyper_parameters")
    if any(key not in ckpt for key in needed):
        raise ValueError(f"{path} is not a recsys_tt training checkpoint (it lacks {needed}).")
    module = build_module(ckpt["hyper_parameters"])
    data = build_datamodule(ckpt["datamodule_hyper_parameters"])
    load_trainable_module(module, ckpt["state_dict"], path)
    if data.num_items != module.hparams.num_items:
        raise ValueError(f"{path} was trained on {module.hparams.num_items} items but its dataset now has "
                         f"{data.num_items}; the data files changed since training.")
    module.item_tokens = data.item_tokens
    data.user_input = module.model.user_input
    module.autocast_dtype = autocast_dtype(ckpt.get("precision", "32-true"))
    return module.eval(), data


def pick_device(name: str = "auto") -> torch.device:
    """"auto" -> the first CUDA device when there is one, else the CPU; any other name as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but no CUDA device is visible; use 'cpu' or 'auto'.")
    return device

