"""Rebuilding a trained model and its data from a training checkpoint (which holds only trainable weights)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from recsys_tt.data.text import TextTemplates
from recsys_tt.model.encoder import autocast_dtype
from recsys_tt.model.loss import LossConfig
from recsys_tt.model.towers import TowerConfig
from recsys_tt.training.checkpoint_files import read_checkpoint
from recsys_tt.training.datamodule import RecDataModule
from recsys_tt.training.module import TwoTowerModule

log = logging.getLogger(__name__)


def _public(params: dict) -> dict:
    return {k: v for k, v in params.items() if not k.startswith("_")}


def build_module(hparams: dict) -> TwoTowerModule:
    """A TwoTowerModule from the hyperparameters a checkpoint or export recorded (configs as plain dicts)."""
    hp = _public(hparams)
    started_from = hp.pop("init_checkpoint", None)  # its weights are in the checkpoint being rebuilt; it may be gone
    hp["tower"], hp["loss"] = TowerConfig(**hp["tower"]), LossConfig(**hp["loss"])
    hp["eval_ks"] = tuple(hp["eval_ks"])
    module = TwoTowerModule(**hp)
    module.hparams["init_checkpoint"] = started_from  # kept as provenance (exports record it)
    return module


def build_datamodule(hparams: dict) -> RecDataModule:
    hp = _public(hparams)
    hp.pop("user_input", None)  # recorded by checkpoints from before it became the model's setting alone
    hp["templates"] = TextTemplates(**hp["templates"])
    return RecDataModule(**hp)


DATA_PATHS = ("interactions", "items", "users", "folder", "source", "cache_dir")
"""The data settings that name files or folders: a checkpoint's are defaults its user sees and may override."""


def load_checkpoint(path: str | Path, data: dict[str, str] | None = None) -> tuple[TwoTowerModule, RecDataModule]:
    """The trained module (eval mode, item tokens attached) and the datamodule of a train.py checkpoint.

    A checkpoint is data: the files it names are read only as defaults, logged, and ``data`` overrides them (the keys
    of ``DATA_PATHS``); caches go to this machine's cache folder (``data["cache_dir"]``, else the default), never to
    the one the checkpoint names.
    """
    unknown = sorted(set(data or {}) - set(DATA_PATHS))
    if unknown:
        raise ValueError(f"data settings {unknown} cannot be overridden here; these can: {', '.join(DATA_PATHS)}.")
    ckpt = read_checkpoint(path)
    module = build_module(ckpt["hyper_parameters"])
    hparams = {**ckpt["datamodule_hyper_parameters"], "cache_dir": None, **(data or {})}
    named = {k: hparams[k] for k in DATA_PATHS if hparams.get(k) is not None}
    log.info("Data of %s: dataset %s%s (override with --data '{\"name\": \"path\"}')", path, hparams.get("dataset"),
             "".join(f", {k} {v}" for k, v in named.items()))
    data = build_datamodule(hparams)
    module.load_trainable(ckpt["state_dict"], path)
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

