"""Helpers the tests share (fixtures are in conftest.py): tiny data, train.py arguments, the scripts as modules."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as a module (scripts are entry points, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tiny_dataset(folder: Path, fmt: str = "csv") -> dict[str, str]:
    """8 users x 12 items; user u watches items u..u+5 one per day, except that user 0 has a timestamp tie."""
    rows = []
    for u in range(8):
        for k in range(6):
            rows.append({"user_id": f"u{u}", "item_id": f"i{(u + k) % 12}", "timestamp": 1000 + 86400 * k})
    rows[1]["timestamp"] = rows[0]["timestamp"]  # tie: file order must decide
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(12)],
                          "title": [f"Movie number {i}" for i in range(12)],
                          "genres": ["Drama" if i % 2 else "Comedy" for i in range(12)]})
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(8)], "age": [20 + u for u in range(8)],
                          "occupation": ["writer", "engineer"] * 4})
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in (("interactions", pd.DataFrame(rows)), ("items", items), ("users", users)):
        path = folder / f"{name}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_json(path, orient="records", lines=True)
        paths[name] = str(path)
    return paths


CUT = 1000 + 3 * 86400  # in the tiny data every user has had three items (u, u+1, u+2) by then; i10, i11 come later


TINY_TEMPLATES = {"item": "{title}. Genres: {genres}.", "profile": "A {age} year old {occupation}."}


CALLBACKS = ('[{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", '
             '"init_args": {"every_n_train_steps": 1, "save_last": true, "save_top_k": 0}}, '
             '{"class_path": "recsys_tt.training.callbacks.PlotCurves"}]')


def clean_env() -> dict[str, str]:
    """This process's environment without torch.distributed's variables, for launching a fresh DDP job."""
    names = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE")
    return {k: v for k, v in os.environ.items() if k not in names}


def train_args(root: Path, paths: dict, backbone: str, max_steps: int, *extra: str) -> list[str]:
    """train.py arguments for a short, fully logged and checkpointed run of the default config on tiny data."""
    return [
        "fit", "--config", "configs/ml100k_minilm.yaml",
        "--trainer.max_steps", str(max_steps), "--trainer.precision", "32-true",
        "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(root), "--trainer.logger.init_args.version", "0",
        "--trainer.callbacks", CALLBACKS,
        "--model.tower.backbone", backbone, "--model.warmup_steps", "2",
        "--data.dataset", "files", "--data.interactions", paths["interactions"], "--data.items", paths["items"],
        "--data.users", paths["users"], "--data.batch_size", "4", "--data.eval_batch_size", "3",
        "--data.templates.item", TINY_TEMPLATES["item"], "--data.templates.profile", TINY_TEMPLATES["profile"],
        *extra,
    ]


def undocumented_options(help_text: str, prefixes: tuple[str, ...]) -> list[str]:
    """Options among ``prefixes`` whose --help entry holds nothing but its type and default."""
    entries = re.split(r"\n  (?=--)", help_text)
    bare = []
    for entry in entries:
        name = entry.split()[0] if entry.strip() else ""
        if name.startswith(prefixes):
            described = re.sub(r"^\S+( \S+)?(, \S+( \S+)?)?", "", entry).split("(type:")[0]
            if not described.strip():
                bare.append(name)
    return bare


class SigtermAt(pl.Callback):
    """Sends this process SIGTERM after ``step`` steps, as a scheduler preempting a job does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def plain_peft_text_vectors(export: Path, base: str) -> tuple[np.ndarray, dict, np.ndarray]:
    """The export's item texts encoded with nothing but transformers + peft, as its model card says: the item
    adapter on ``base``, mean pooling, L2 norm. Returns the vectors, the tokens and the adapted hidden states."""
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    meta = json.loads((export / "meta.json").read_text())
    texts = pd.read_parquet(export / "items.parquet")["text"].tolist()
    tower = PeftModel.from_pretrained(AutoModel.from_pretrained(base), str(export / "adapters" / "item")).eval()
    tokens = AutoTokenizer.from_pretrained(base)(texts, padding=True, truncation=True, return_tensors="pt",
                                                 max_length=meta["data_hparams"]["max_item_tokens"])
    with torch.no_grad():
        hidden = tower(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)  # mean pooling
    return pooled.numpy(), tokens, hidden.numpy()
