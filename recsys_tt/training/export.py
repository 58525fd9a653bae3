"""Writing export folders (see ``recsys_tt.export.folder`` for the layout) from a training checkpoint.

The folder is written to a temporary sibling and renamed into place, so a crash never leaves a half folder.
"""

from __future__ import annotations

import datetime
import json
import logging
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recsys_tt.export.folder import (
    FORMAT_VERSION,
    dataset_user_batches,
    hashed_files,
    require_finite,
    seal,
)
from recsys_tt.export.index import build_index, recall_against_exact, unit_length
from recsys_tt.export.model_card import model_card
from recsys_tt.files import folder_digests, replacing, sha256_file
from recsys_tt.model.encoder import dtype_name
from recsys_tt.model.weights import save_towers
from recsys_tt.training.checkpoint_files import resolve_checkpoint, run_folder
from recsys_tt.training.checkpoints import load_checkpoint, pick_device
from recsys_tt.training.datamodule import RecDataModule

log = logging.getLogger(__name__)


def _versions() -> dict[str, str]:
    names = ("recsys_tt", "torch", "transformers", "peft", "pytorch-lightning", "faiss-cpu", "faiss-gpu-cu12")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _tables(data: RecDataModule) -> tuple[pd.DataFrame, pd.DataFrame]:
    split = data.split
    items = pd.DataFrame({"item_id": data.data.items["item_id"].to_numpy(), "text": data.item_texts,
                          "history_name": data.history_names, "train_count": data.item_counts.numpy()})
    users = pd.DataFrame({"user_id": data.data.user_ids, "profile": data.profile_texts,
                          "train_items": [t.tolist() for t in split.train], "valid_item": split.valid,
                          "test_item": split.test})
    return items, users


def export_model(checkpoint: str | Path, out: str | Path, factory: str = "Flat", search_params: str = "",
                 report_users: int = 500, overwrite: bool = False, device: str = "auto",
                 data: dict[str, str] | None = None) -> Path:
    """Encodes the catalog with a checkpoint's towers and writes a complete export folder (atomically); ``data``
    names the data files to read instead of the checkpoint's (``load_checkpoint``)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite true to replace it (the old folder stays until "
                              "the new one is complete).")
    checkpoint = resolve_checkpoint(checkpoint)
    log.info("Exporting %s", checkpoint)
    module, data = load_checkpoint(checkpoint, data)
    module.to(pick_device(device))
    encoder = module.encoder
    text, vectors = encoder.catalog()
    module.model.fill_item_ids(torch.from_numpy(text).to(module.device))  # the towers then give these vectors too
    require_finite(vectors, checkpoint, "the checkpoint encodes items to non-finite vectors (diverged training?): "
                   "export an earlier checkpoint")
    index, seconds = build_index(vectors, factory, search_params)
    items, users = _tables(data)
    sample = np.random.default_rng(0).permutation(len(users))[:report_users]
    queries = encoder.users(dataset_user_batches(data.user_features, data.split, sample, "test"), text)
    recall = recall_against_exact(index, queries, vectors, k=min(10, len(vectors)))
    log.info("Built %s over %d items in %.2fs; recall@10 against exact search: %.4f", factory, len(vectors),
             seconds, recall)
    with replacing(out) as staging:
        _write(staging, index, text, vectors, items, users)
        temperature = {f"loss.{k}": v for k, v in module.loss.state_dict().items()}
        save_towers(module.model, staging, temperature)
        digests = folder_digests(staging, hashed_files(module.model.adapters))
        meta = {
            "format_version": FORMAT_VERSION, "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
            "dim": int(vectors.shape[1]), "metric": "inner_product",
            "normalized": unit_length(vectors), "factory": factory,
            "search_params": search_params, "num_items": int(len(vectors)), "num_users": int(len(users)),
            "precision": dtype_name(encoder.precision), "backbone": module.model.config.backbone,
            "adapters": module.model.adapters, "sha256": digests,
            "source_checkpoint": str(Path(checkpoint).resolve()), "checkpoint_sha256": sha256_file(checkpoint),
            "versions": _versions(), "build_seconds": round(seconds, 3),
            "ann_recall_at_10": {"value": recall, "users": int(len(sample))},
            "model_hparams": _jsonable(module.hparams), "data_hparams": _jsonable(data.hparams),
            "test_metrics": run_test_metrics(checkpoint),
        }
        meta = seal(meta)
        (staging / "meta.json").write_text(json.dumps(meta, indent=2))
        (staging / "README.md").write_text(model_card(meta))
    return out


def _write(folder: Path, index, text, vectors, items, users) -> None:
    import faiss

    faiss.write_index(index, str(folder / "index.faiss"))
    np.save(folder / "vectors.npy", vectors)
    np.save(folder / "text_vectors.npy", text)
    items.to_parquet(folder / "items.parquet", index=False)
    users.to_parquet(folder / "users.parquet", index=False)


def run_test_metrics(checkpoint: Path) -> dict[str, float] | None:
    """The test metrics train.py logged for the run a checkpoint belongs to (runs/NAME/version_N/metrics.csv),
    or None when the run logged none there."""
    path = run_folder(checkpoint) / "metrics.csv"
    if not path.exists():
        return None
    frame = pd.read_csv(path)
    tested = {c.removeprefix("test/"): frame[c].dropna() for c in frame.columns if c.startswith("test/")}
    return {name: float(values.iloc[-1]) for name, values in tested.items() if len(values)} or None


def _jsonable(params) -> dict:
    return json.loads(json.dumps({k: v for k, v in dict(params).items() if not k.startswith("_")},
                                 default=lambda o: o.__dict__))
