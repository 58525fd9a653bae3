"""Changing an export's catalog without retraining: adding cold-start items (text in, vectors out), and writing back
item vectors refreshed from logs with the towers that now produce them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from recsys_tt.data.tables import DataError, read_ids
from recsys_tt.data.text import render_table
from recsys_tt.export.folder import FORMAT_VERSION, ExportFolder, hashed_files, require_finite, seal
from recsys_tt.export.index import unit_length
from recsys_tt.export.model_card import model_card
from recsys_tt.files import FolderBusyError, folder_digests, replacing
from recsys_tt.model.towers import TwoTower
from recsys_tt.model.weights import TOWERS, save_towers


def _new_items(path: str | Path, existing: dict[str, int]) -> pd.DataFrame:
    frame = read_ids(path, ["item_id"])
    repeated = frame["item_id"][frame["item_id"].duplicated()]
    if len(repeated):
        raise DataError(f"{path} lists item_id {repeated.iloc[0]!r} more than once; ids must be unique.")
    clash = frame["item_id"][frame["item_id"].isin(existing)]
    if len(clash):
        raise DataError(f"{path}: item_id(s) {clash.tolist()[:5]} are already in the export; give new items new ids.")
    return frame.reset_index(drop=True)


def add_items(export_dir: str | Path, items_file: str | Path) -> dict:
    """Encodes new items with the export's item tower and appends them to the index, vectors and tables, replacing
    the folder atomically. Having no trained id vector, each new item gets the one its text predicts
    (``TwoTower.unseen_item_ids``), plus the cold-item offset refreshes learnt, boosted as the model's
    ``unseen_item_boost`` says, where the model has id vectors; else its vector is its text vector."""
    export = ExportFolder.load(export_dir)
    new = _new_items(items_file, export.item_rows)
    texts = render_table(export.templates.item, new, "item")
    names = render_table(export.templates.history_item, new, "item")
    text = export.encoder.item_text(export.item_tokens(texts), progress=True).float().cpu().numpy()
    require_finite(text, items_file, "these items' texts encode to non-finite vectors; nothing was added")
    items = pd.concat([export.items, pd.DataFrame({"item_id": new["item_id"], "text": texts, "history_name": names,
                                                   "train_count": 0})], ignore_index=True)
    all_text = np.concatenate([export.text_vectors, text])
    model, towers = export.encoder.model.float(), None
    vectors = text
    if model.config.item_id_embeddings:
        extra, rows = extra_tensors(export), torch.arange(len(export.items), len(items))
        model.fill_item_ids(torch.from_numpy(all_text))
        with torch.no_grad():
            if PRIOR_ITEM_IDS in extra:  # a refresh's prior means: the new items' is what their text predicts
                extra[PRIOR_ITEM_IDS] = torch.cat([extra[PRIOR_ITEM_IDS], model.item_ids.weight[rows]])
            model.item_ids.weight[rows] += cold_item_offset(extra, model.dim)
            vectors = model.boost_unseen(model.add_item_ids(torch.from_numpy(text), rows)).numpy()
        towers = model, extra
    require_finite(vectors, items_file, "these items' predicted vectors are not finite; nothing was added")
    export.index.add(np.ascontiguousarray(vectors, dtype=np.float32))  # appended: the index needs no rebuild
    write_catalog(export, items, all_text, np.concatenate([export.vectors, vectors]), export.index,
                  added=len(new), towers=towers)
    return {"export": str(export.folder), "added": len(new), "num_items": len(items)}


def _unchanged_since_read(export: ExportFolder) -> None:
    """Refuses to write a catalog computed from a folder another writer has replaced since (its change would be
    lost)."""
    now = json.loads((export.folder / "meta.json").read_text()).get("model_version")
    if now != export.meta["model_version"]:
        raise FolderBusyError(f"{export.folder} was replaced by another writer while this one worked (model_version "
                              f"{export.meta['model_version']} -> {now}); nothing was written: run this again.")


COLD_ITEM_OFFSET = "catalog.cold_item_offset"
"""The towers file's key of the offset that refreshes learnt for items placed by their text (``cold_item_offset``)."""
PRIOR_ITEM_IDS = "catalog.prior_item_ids"
"""The towers file's key of the id vectors before any refresh: every refresh's prior means."""


def extra_tensors(export: ExportFolder) -> dict[str, torch.Tensor]:
    """The tensors stored beside the towers that are not the model's, which a rewrite keeps: the loss's (temperature,
    relevance link) and the catalog's cold-item offset."""
    return {k: v for k, v in load_file(str(export.folder / TOWERS)).items() if not k.startswith("model.")}


def cold_item_offset(extra: dict[str, torch.Tensor], dim: int) -> torch.Tensor:
    """(dim,) what the last refresh learnt that every item without training interactions lacks beyond the id vector
    its text predicts (``recsys_tt.offline.item_refresh``): items added later start from it too. Zero before one."""
    return extra.get(COLD_ITEM_OFFSET, torch.zeros(dim)).float()


def write_catalog(export: ExportFolder, items: pd.DataFrame, text: np.ndarray, vectors: np.ndarray, index,
                  added: int = 0, towers: tuple[TwoTower, dict[str, torch.Tensor]] | None = None,
                  note: dict | None = None) -> None:
    """Replaces the export folder (atomically) with this catalog: its items table, text vectors, vectors and the
    index over them, and ``towers`` (the model and its ``extra_tensors``) when they changed. ``note`` joins meta.json
    (what changed the folder)."""
    import faiss

    folder = export.folder
    require_finite(vectors, folder / "vectors.npy", "nothing was written")
    meta = dict(export.meta, num_items=len(items), added_items=export.meta.get("added_items", 0) + added,
                normalized=unit_length(vectors), **(note or {}))
    with replacing(folder) as staging:
        _unchanged_since_read(export)
        shutil.copytree(folder, staging, dirs_exist_ok=True)
        faiss.write_index(index, str(staging / "index.faiss"))
        np.save(staging / "vectors.npy", np.ascontiguousarray(vectors, dtype=np.float32))
        np.save(staging / "text_vectors.npy", np.ascontiguousarray(text, dtype=np.float32))
        items.to_parquet(staging / "items.parquet", index=False)
        if towers is not None:
            model, extra = towers
            save_towers(model, staging, extra)
            meta["model_hparams"] = dict(meta["model_hparams"], num_items=model.num_items)
        meta["sha256"] = folder_digests(staging, hashed_files(export.meta["adapters"]))
        meta = seal(meta | {"format_version": FORMAT_VERSION})
        (staging / "meta.json").write_text(json.dumps(meta, indent=2))
        (staging / "README.md").write_text(model_card(meta))
