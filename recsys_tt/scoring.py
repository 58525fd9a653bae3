"""Offline scoring of dataset users from an export folder, and evaluation of recommendation lists."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from recsys_tt.data import DataError, read_table, require_columns
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


def read_new_users(path: str | Path, export: ExportFolder) -> tuple[list[str], list[str], list[np.ndarray], int]:
    """Users known only by ``text`` and/or ``recent_item_ids`` (oldest first) from a JSONL/CSV/Parquet file.

    Returns ids, profile texts, history rows and how many recent item ids the export does not know (dropped).
    """
    frame = read_table(path)
    require_columns(frame, ["user_id"], path)
    if not {"text", "recent_item_ids"} & set(frame.columns):
        raise DataError(f"{path} needs a text or a recent_item_ids column to describe each user.")
    rows = {item: i for i, item in enumerate(export.items["item_id"].astype(str))}
    texts = frame["text"].fillna("").astype(str).tolist() if "text" in frame else [""] * len(frame)
    recent = frame["recent_item_ids"].tolist() if "recent_item_ids" in frame else [[]] * len(frame)
    histories, unknown = [], 0
    for line, (text, items) in enumerate(zip(texts, recent), start=1):
        items = [] if items is None or (isinstance(items, float) and np.isnan(items)) else [str(i) for i in items]
        known = [rows[i] for i in items if i in rows]
        unknown += len(items) - len(known)
        if not text.strip() and not known:
            raise DataError(f"{path}, user {line}: no text and no known recent item; give at least one.")
        histories.append(np.asarray(known, dtype=np.int64))
    return frame["user_id"].astype(str).tolist(), texts, histories, unknown


def _dataset_queries(export: ExportFolder, user_ids: list[str] | None, split: str, batch_size: int, report: dict):
    users, unknown = select_users(export, user_ids)
    if unknown:
        log.warning("%d unknown user ids skipped, e.g. %s", len(unknown), unknown[:5])
    report.update(users=int(len(users)), unknown_users=len(unknown))
    ids = export.users["user_id"].to_numpy()
    for start in tqdm(range(0, len(users), batch_size), desc="scoring users", unit="batch"):
        chunk = users[start: start + batch_size]
        yield ids[chunk], export.user_vectors(chunk, split), [export.split.history(u, split) for u in chunk]


def _new_user_queries(export: ExportFolder, path: str | Path, batch_size: int, report: dict):
    ids, texts, histories, unknown_items = read_new_users(path, export)
    report.update(users=len(ids), unknown_recent_items=unknown_items)
    for start in tqdm(range(0, len(ids), batch_size), desc="scoring new users", unit="batch"):
        part = slice(start, start + batch_size)
        yield np.asarray(ids[part]), export.new_user_vectors(texts[part], histories[part]), histories[part]


def score_users(export_dir: str | Path, out: str | Path, k: int = 100, split: str = "test",
                user_ids: list[str] | None = None, users_file: str | Path | None = None,
                batch_size: int = 512) -> dict:
    """Writes each user's top-k (seen items excluded) to Parquet; returns a small report.

    Users are the dataset's (with the history before their ``split`` target), or new users from ``users_file``.
    """
    _check_stage(split)
    export = ExportFolder.load(export_dir)
    if not 0 < k <= export.meta["num_items"]:
        raise ValueError(f"k must be in 1..{export.meta['num_items']} (the catalog size), got {k}.")
    report: dict = {"out": str(out)}
    queries = (_new_user_queries(export, users_file, batch_size, report) if users_file
               else _dataset_queries(export, user_ids, split, batch_size, report))
    item_ids, frames = export.items["item_id"].to_numpy(), []
    for ids, vectors, seen in queries:
        rows, scores = search_excluding(export.index, vectors, k, seen)
        valid = rows >= 0
        frames.append(pd.DataFrame({"user_id": np.repeat(ids, k)[valid.ravel()], "item_id": item_ids[rows[valid]],
                                    "rank": np.tile(np.arange(1, k + 1), len(ids))[valid.ravel()],
                                    "score": scores[valid]}))
    columns = ["user_id", "item_id", "rank", "score"]
    recs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_suffix(".parquet.partial")
    recs.to_parquet(tmp, index=False)
    tmp.replace(out)  # a crash never leaves a truncated file under the final name
    report["rows"] = int(len(recs))
    return report


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
