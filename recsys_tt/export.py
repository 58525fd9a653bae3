"""Export folders: everything scoring and serving need, tied to the exact weights that produced the vectors.

Layout of an export folder::

    meta.json          dims, metric, factory, counts, backbone, sha256 of every file, source checkpoint, versions
    index.faiss        FAISS index over the item vectors (inner product on L2-normalised vectors)
    vectors.npy        (N, D) float32 item vectors, row-aligned with items.parquet (for exact rescoring)
    text_vectors.npy   (N, D) float32 item text vectors (what item-vector user towers read as history)
    items.parquet      row -> item_id, text, history_name, train_count
    users.parquet      user_id, profile, train_items (rows), valid_item, test_item (row or -1)
    weights.pt         trainable weights (adapters, heads, id vectors, temperature)

It is written to a temporary sibling folder and renamed into place, so a crash never leaves a half folder.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recsys_tt.batches import UserFeatures
from recsys_tt.checkpoints import build_module, load_checkpoint, load_trainable, pick_device, resolve_checkpoint
from recsys_tt.data import LeaveOneOut
from recsys_tt.datamodule import RecDataModule
from recsys_tt.files import folder_digests, replacing, restore_interrupted_swap, sha256_file, verify_digests
from recsys_tt.index import build_index, recall_against_exact
from recsys_tt.module import TwoTowerModule
from recsys_tt.text import TextTemplates, tokenize_table
from recsys_tt.towers import is_base_weight, load_tokenizer

log = logging.getLogger(__name__)
FORMAT_VERSION = 2  # 2: meta.json holds the sha256 of every other file
FILES = ("meta.json", "index.faiss", "vectors.npy", "text_vectors.npy", "items.parquet", "users.parquet", "weights.pt")
HASHED = FILES[1:]


def _versions() -> dict[str, str]:
    names = ("recsys_tt", "torch", "transformers", "peft", "pytorch-lightning", "faiss-cpu", "faiss-gpu-cu12")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def catalog_vectors(module: TwoTowerModule) -> tuple[np.ndarray, np.ndarray]:
    """(text vectors, item vectors) of the whole catalog as float32 arrays."""
    text = module.encode_catalog_text()
    with torch.no_grad():
        items = module.model.add_item_ids(text, torch.arange(len(text), device=text.device))
    return text.float().cpu().numpy(), items.float().cpu().numpy()


def encode_user_batches(module: TwoTowerModule, batches: Iterable[dict], text_vectors: np.ndarray) -> np.ndarray:
    """(U, D) user vectors from user-tower input batches; history items' text vectors from ``text_vectors``."""
    text, out = torch.from_numpy(text_vectors).to(module.device), []
    with torch.no_grad(), module.precision_context():
        for batch in batches:
            batch = {name: values.to(module.device) for name, values in batch.items()}
            out.append(module.encode_users(batch, text).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, module.model.dim), dtype=np.float32)


def encode_users(module: TwoTowerModule, features: UserFeatures, split: LeaveOneOut, users: np.ndarray, stage: str,
                 text_vectors: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(U, D) vectors of dataset users (indices) with the history that precedes their ``stage`` target."""
    chunks = (np.asarray(users[i: i + batch_size]) for i in range(0, len(users), batch_size))
    batches = (features.batch(c, [split.history(u, stage) for u in c]) for c in chunks)
    return encode_user_batches(module, batches, text_vectors)


def _tables(data: RecDataModule) -> tuple[pd.DataFrame, pd.DataFrame]:
    split = data.split
    items = pd.DataFrame({"item_id": data.data.items["item_id"].to_numpy(), "text": data.item_texts,
                          "history_name": data.history_names, "train_count": data.item_counts.numpy()})
    users = pd.DataFrame({"user_id": data.data.user_ids, "profile": data.profile_texts,
                          "train_items": [t.tolist() for t in split.train], "valid_item": split.valid,
                          "test_item": split.test})
    return items, users


def export_model(checkpoint: str | Path, out: str | Path, factory: str = "Flat", search_params: str = "",
                 report_users: int = 500, overwrite: bool = False, device: str = "auto") -> Path:
    """Encodes the catalog with a checkpoint's towers and writes a complete export folder (atomically)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite true to replace it (the old folder stays until "
                              "the new one is complete).")
    checkpoint = resolve_checkpoint(checkpoint)
    module, data = load_checkpoint(checkpoint)
    module.to(pick_device(device))
    text, vectors = catalog_vectors(module)
    index, seconds = build_index(vectors, factory, search_params)
    items, users = _tables(data)
    sample = np.random.default_rng(0).permutation(len(users))[:report_users]
    queries = encode_users(module, data.user_features, data.split, sample, "test", text)
    recall = recall_against_exact(index, queries, vectors, k=min(10, len(vectors)))
    log.info("Built %s over %d items in %.2fs; recall@10 against exact search: %.4f", factory, len(vectors),
             seconds, recall)
    with replacing(out) as staging:
        _write(staging, index, text, vectors, items, users, module)
        meta = {
            "format_version": FORMAT_VERSION, "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
            "dim": int(vectors.shape[1]), "metric": "inner_product", "normalized": True, "factory": factory,
            "search_params": search_params, "num_items": int(len(vectors)), "num_users": int(len(users)),
            "precision": str(module.autocast_dtype or torch.float32).removeprefix("torch."),
            "backbone": module.model.config.backbone, "sha256": folder_digests(staging, HASHED),
            "source_checkpoint": str(Path(checkpoint).resolve()), "checkpoint_sha256": sha256_file(checkpoint),
            "versions": _versions(), "build_seconds": round(seconds, 3),
            "ann_recall_at_10": {"value": recall, "users": int(len(sample))},
            "model_hparams": _jsonable(module.hparams), "data_hparams": _jsonable(data.hparams),
        }
        (staging / "meta.json").write_text(json.dumps(meta, indent=2))
    return out


def _write(folder: Path, index, text, vectors, items, users, module: TwoTowerModule) -> None:
    import faiss

    faiss.write_index(index, str(folder / "index.faiss"))
    np.save(folder / "vectors.npy", vectors)
    np.save(folder / "text_vectors.npy", text)
    items.to_parquet(folder / "items.parquet", index=False)
    users.to_parquet(folder / "users.parquet", index=False)
    weights = {k: v.cpu() for k, v in module.state_dict().items() if not is_base_weight(k)}
    torch.save(weights, folder / "weights.pt")


def _jsonable(params) -> dict:
    return json.loads(json.dumps({k: v for k, v in dict(params).items() if not k.startswith("_")},
                                 default=lambda o: o.__dict__))


@dataclass
class ExportFolder:
    """A checked export folder; the model is rebuilt only when user vectors are asked for."""

    folder: Path
    meta: dict
    items: pd.DataFrame
    users: pd.DataFrame
    text_vectors: np.ndarray
    vectors: np.ndarray
    index: object

    @classmethod
    def load(cls, folder: str | Path) -> ExportFolder:
        import faiss

        folder = Path(folder)
        restore_interrupted_swap(folder)
        missing = [name for name in FILES if not (folder / name).exists()]
        if missing:
            raise ValueError(f"{folder} is not a complete recsys_tt export (missing {missing}); "
                             "re-run scripts/export_index.py.")
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{folder / 'meta.json'} is not valid JSON ({err}); the export is damaged, re-export "
                             "it.") from err
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder} has export format {meta.get('format_version')}; this recsys_tt reads "
                             f"{FORMAT_VERSION}. Re-export it.")
        verify_digests(folder, meta["sha256"], "re-export it, or add items with scripts/add_items.py only.")
        vectors, text = np.load(folder / "vectors.npy"), np.load(folder / "text_vectors.npy")
        index = faiss.read_index(str(folder / "index.faiss"))
        expected = (meta["num_items"], meta["dim"])
        for name, shape in (("vectors.npy", vectors.shape), ("text_vectors.npy", text.shape),
                            ("index.faiss", (index.ntotal, index.d))):
            if tuple(shape) != expected:
                raise ValueError(f"{folder / name} holds {tuple(shape)} but meta.json says {expected}; "
                                 "the folder was modified after export. Re-export it.")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"{folder / 'index.faiss'} does not use inner product; re-export it.")
        return cls(folder, meta, pd.read_parquet(folder / "items.parquet"), pd.read_parquet(folder / "users.parquet"),
                   text, vectors, index)

    @cached_property
    def module(self) -> TwoTowerModule:
        """The towers, rebuilt from the recorded config and weights.pt, checked against meta.json."""
        weights = self.folder / "weights.pt"  # its sha256 was checked on load
        module = build_module(self.meta["model_hparams"])
        load_trainable(module, torch.load(weights, map_location="cpu", weights_only=True), weights)
        module.autocast_dtype = None if self.meta["precision"] == "float32" else getattr(torch, self.meta["precision"])
        if module.model.dim != self.meta["dim"]:
            raise ValueError(f"The model gives {module.model.dim}-d vectors but the index holds {self.meta['dim']}-d.")
        hp = self.meta["data_hparams"]
        module.item_tokens = tokenize_table(self.tokenizer, self.items["text"].tolist(), hp["max_item_tokens"])
        return module.eval()

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.meta["data_hparams"]["backbone"])

    @cached_property
    def templates(self) -> TextTemplates:
        return TextTemplates(**self.meta["data_hparams"]["templates"])

    @cached_property
    def item_rows(self) -> dict[str, int]:
        """Original item id -> row of the index, vectors and items table."""
        return {item: i for i, item in enumerate(self.items["item_id"].astype(str))}

    @cached_property
    def item_popularity(self) -> np.ndarray:
        """(N,) share of users who had each item in training, add-one smoothed (for novelty)."""
        return (self.items["train_count"].to_numpy() + 1.0) / (len(self.users) + 1.0)

    @cached_property
    def split(self) -> LeaveOneOut:
        return LeaveOneOut([np.asarray(t, dtype=np.int64) for t in self.users["train_items"]],
                           self.users["valid_item"].to_numpy(), self.users["test_item"].to_numpy())

    @cached_property
    def user_features(self) -> UserFeatures:
        hp = self.meta["data_hparams"]
        return UserFeatures.build(hp["user_input"], self.users["profile"].tolist(),
                                  self.items["history_name"].tolist(), self.templates,
                                  self.tokenizer, hp["history_len"], hp["max_user_tokens"],
                                  hp["max_profile_tokens"])

    def user_vectors(self, users: np.ndarray, stage: str, batch_size: int = 256) -> np.ndarray:
        """(U, D) vectors of dataset users (indices) with the history that precedes their ``stage`` target."""
        return encode_users(self.module, self.user_features, self.split, users, stage, self.text_vectors, batch_size)

    def new_user_vectors(self, profiles: list[str], histories: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """(U, D) vectors of users known only by free text and/or recent item rows (cold start)."""
        batches = (self.user_features.batch_from_text(profiles[i: i + batch_size], histories[i: i + batch_size])
                   for i in range(0, len(profiles), batch_size))
        return encode_user_batches(self.module, batches, self.text_vectors)
