"""Offline scoring of dataset users from an export folder, and evaluation of recommendation lists."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from recsys_tt.export import ExportFolder
from recsys_tt.metrics import catalog_coverage, intra_list_diversity, novelty, ranking_metrics
from recsys_tt.retrieval import search_excluding

log = logging.getLogger(__name__)
_STAGES = ("test", "valid")


def _check_stage(split: str) -> None:
    if split not in _STAGES:
        raise ValueError(f"split must be one of {_STAGES}, got {split!r}.")


def select_users(export: ExportFolder, user_ids: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """User indices for the requested ids (all when None) and the ids that the export does not know."""
    known = {u: i for i, u in enumerate(export.users["user_id"])}
    if user_ids is None:
        return np.arange(len(known)), []
    unknown = [u for u in user_ids if u not in known]
    return np.asarray([known[u] for u in user_ids if u in known], dtype=np.int64), unknown


def score_users(export_dir: str | Path, out: str | Path, k: int = 100, split: str = "test",
                user_ids: list[str] | None = None, batch_size: int = 512) -> dict:
    """Writes each user's top-k (seen items excluded) to Parquet; returns a small report."""
    _check_stage(split)
    export = ExportFolder.load(export_dir)
    if not 0 < k <= export.meta["num_items"]:
        raise ValueError(f"k must be in 1..{export.meta['num_items']} (the catalog size), got {k}.")
    users, unknown = select_users(export, user_ids)
    if unknown:
        log.warning("%d unknown user ids skipped, e.g. %s", len(unknown), unknown[:5])
    item_ids = export.items["item_id"].to_numpy()
    frames = []
    for start in tqdm(range(0, len(users), batch_size), desc="scoring users", unit="batch"):
        chunk = users[start: start + batch_size]
        queries = export.user_vectors(chunk, split)
        seen = [export.split.history(u, split) for u in chunk]
        rows, scores = search_excluding(export.index, queries, k, seen)
        valid = rows >= 0
        frames.append(pd.DataFrame({
            "user_id": np.repeat(export.users["user_id"].to_numpy()[chunk], k)[valid.ravel()],
            "item_id": item_ids[rows[valid]], "rank": np.tile(np.arange(1, k + 1), len(chunk))[valid.ravel()],
            "score": scores[valid]}))
    recs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["user_id", "item_id", "rank",
                                                                                      "score"])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_suffix(".parquet.partial")
    recs.to_parquet(tmp, index=False)
    tmp.replace(out)  # a crash never leaves a truncated file under the final name
    return {"out": str(out), "users": int(len(users)), "unknown_users": len(unknown), "rows": int(len(recs))}


def evaluate_recommendations(recs_path: str | Path, export_dir: str | Path, split: str = "test",
                             ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Recall/NDCG/MRR@K against each user's held-out item, plus coverage, novelty and diversity at max K."""
    _check_stage(split)
    export = ExportFolder.load(export_dir)
    recs = pd.read_parquet(recs_path)
    missing = {"user_id", "item_id", "rank"} - set(recs.columns)
    if missing:
        raise ValueError(f"{recs_path} lacks column(s) {sorted(missing)}; write it with scripts/score_offline.py.")
    rows = {item: i for i, item in enumerate(export.items["item_id"].astype(str))}
    recs = recs.assign(user_id=recs["user_id"].astype(str), row=recs["item_id"].astype(str).map(rows))
    if recs["row"].isna().any():
        raise ValueError(f"{recs_path} recommends item ids the export does not hold, e.g. "
                         f"{recs.loc[recs['row'].isna(), 'item_id'].iloc[0]!r}; was it scored from another export?")
    users = export.users.assign(target=export.split.targets(split))
    users = users[users["target"] >= 0]
    depth = max(ks)
    lists = recs[recs["rank"] <= depth].sort_values(["user_id", "rank"]).groupby("user_id")["row"].apply(list)
    table = np.full((len(users), depth), -1, dtype=np.int64)
    for i, user in enumerate(users["user_id"].astype(str)):
        items = lists.get(user, [])
        table[i, : len(items)] = items
    hits = table == users["target"].to_numpy()[:, None]
    ranks = torch.as_tensor(np.where(hits.any(1), hits.argmax(1), depth + 1))  # 0-based; beyond depth = miss
    metrics = {name: float(v.mean()) for name, v in ranking_metrics(ranks, ks).items()}
    popularity = (export.items["train_count"].to_numpy() + 1.0) / (len(export.users) + 1.0)
    metrics.update({f"coverage@{depth}": catalog_coverage(table, len(export.items)),
                    f"novelty@{depth}": novelty(table, popularity),
                    f"diversity@{depth}": intra_list_diversity(table, export.vectors), "users": float(len(users))})
    return metrics
