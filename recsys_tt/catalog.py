"""Adding cold-start items to an export: text in, vectors out, no retraining."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recsys_tt.data import DataError, read_ids
from recsys_tt.export import HASHED, ExportFolder
from recsys_tt.files import folder_digests, replacing
from recsys_tt.text import render_table, tokenize_table


def _new_items(path: str | Path, existing: pd.Series) -> pd.DataFrame:
    frame = read_ids(path, ["item_id"])
    repeated = frame["item_id"][frame["item_id"].duplicated()]
    if len(repeated):
        raise DataError(f"{path} lists item_id {repeated.iloc[0]!r} more than once; ids must be unique.")
    clash = frame["item_id"][frame["item_id"].isin(set(existing.astype(str)))]
    if len(clash):
        raise DataError(f"{path}: item_id(s) {clash.tolist()[:5]} are already in the export; give new items new ids.")
    return frame.reset_index(drop=True)


def add_items(export_dir: str | Path, items_file: str | Path) -> dict:
    """Encodes new items with the export's item tower (text only: they have no trained id vector) and appends
    them to the index, vectors and tables, replacing the folder atomically."""
    export = ExportFolder.load(export_dir)
    new = _new_items(items_file, export.items["item_id"])
    texts = render_table(export.templates.item, new, "item")
    names = render_table(export.templates.history_item, new, "item")
    tokens = tokenize_table(export.tokenizer, texts, export.meta["data_hparams"]["max_item_tokens"])
    rows = torch.arange(len(export.items), len(export.items) + len(new))
    with torch.no_grad():
        text = export.module.model.encode_item_text(**tokens)
        vectors = export.module.model.add_item_ids(text, rows)
    items = pd.concat([export.items, pd.DataFrame({"item_id": new["item_id"], "text": texts, "history_name": names,
                                                   "train_count": 0})], ignore_index=True)
    _write_extended(export, items, text.float().numpy(), vectors.float().numpy())
    return {"export": str(export.folder), "added": len(new), "num_items": len(items)}


def _write_extended(export: ExportFolder, items: pd.DataFrame, text: np.ndarray, vectors: np.ndarray) -> None:
    import faiss

    folder = export.folder
    with replacing(folder) as staging:
        shutil.copytree(folder, staging, dirs_exist_ok=True)
        export.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        faiss.write_index(export.index, str(staging / "index.faiss"))
        np.save(staging / "vectors.npy", np.concatenate([export.vectors, vectors]))
        np.save(staging / "text_vectors.npy", np.concatenate([export.text_vectors, text]))
        items.to_parquet(staging / "items.parquet", index=False)
        meta = dict(export.meta, num_items=len(items), added_items=export.meta.get("added_items", 0) + len(vectors),
                    sha256=folder_digests(staging, HASHED))
        (staging / "meta.json").write_text(json.dumps(meta, indent=2))
