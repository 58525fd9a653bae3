"""Offline scoring of dataset users from an export folder, and evaluation of recommendation lists."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from recsys_tt.data.tables import DataError, read_table, require_columns
from recsys_tt.export.folder import ExportFolder
from recsys_tt.model.encoder import lightning_precision
from recsys_tt.model.metrics import catalog_coverage, intra_list_diversity, novelty, ranking_metrics
from recsys_tt.serving.retrieval import search_excluding

log = logging.getLogger(__name__)
_STAGES = ("test", "valid")
_COLUMNS = ["user_id", "item_id", "rank", "score"]


def _check_stage(split: str) -> None:
    if split not in _STAGES:
        raise ValueError(f"split must be one of {_STAGES}, got {split!r}.")


def select_users(export: ExportFolder, user_ids: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """User indices for the requested ids (all when None) and the ids that the export does not know."""
    known = export.user_rows
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
    rows = export.item_rows
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


@dataclass
class ScoringRequest:
    """Who to score: dataset users (indices, with their ``split`` history) or new users (text + recent items)."""

    ids: np.ndarray  # (U,) user ids written to the output
    histories: list[np.ndarray]  # (U,) item rows each user has seen (excluded from results)
    users: np.ndarray | None = None  # (U,) dataset user indices, or None for new users
    profiles: list[str] | None = None  # (U,) free text of new users
    split: str = "test"

    def vectors(self, export: ExportFolder, positions: np.ndarray) -> np.ndarray:
        if self.users is not None:
            return export.user_vectors(self.users[positions], self.split)
        return export.new_user_vectors([self.profiles[p] for p in positions], [self.histories[p] for p in positions])


def dataset_request(export: ExportFolder, user_ids: list[str] | None, split: str) -> tuple[ScoringRequest, dict]:
    users, unknown = select_users(export, user_ids)
    if unknown:
        log.warning("%d unknown user ids skipped, e.g. %s", len(unknown), unknown[:5])
    request = ScoringRequest(export.user_ids[users],
                             [export.split.history(u, split) for u in users], users=users, split=split)
    return request, {"users": int(len(users)), "unknown_users": len(unknown)}


def new_user_request(export: ExportFolder, path: str | Path) -> tuple[ScoringRequest, dict]:
    ids, texts, histories, unknown_items = read_new_users(path, export)
    return (ScoringRequest(np.asarray(ids), histories, profiles=texts),
            {"users": len(ids), "unknown_recent_items": unknown_items})


class UserScorer(pl.LightningModule):
    """Lightning predict job: user positions -> user vectors -> FAISS top-k with seen items excluded."""

    def __init__(self, export: ExportFolder, request: ScoringRequest, k: int) -> None:
        super().__init__()
        self.export, self.request, self.k = export, request, k
        self.tower = export.encoder.model  # a submodule, so the strategy moves it to this rank's device

    def predict_step(self, positions: torch.Tensor) -> pd.DataFrame:
        positions = positions.cpu().numpy()
        vectors = self.request.vectors(self.export, positions)
        rows, scores = search_excluding(self.export.index, vectors, self.k,
                                        [self.request.histories[p] for p in positions])
        valid = rows >= 0
        return pd.DataFrame({"user_id": np.repeat(self.request.ids[positions], self.k)[valid.ravel()],
                             "item_id": self.export.item_ids[rows[valid]],
                             "rank": np.tile(np.arange(1, self.k + 1), len(positions))[valid.ravel()],
                             "score": scores[valid]})


class ShardWriter(BasePredictionWriter):
    """Each rank writes its recommendations to ``<out>.shard-<rank>.parquet`` when its predictions end."""

    def __init__(self, out: Path) -> None:
        super().__init__(write_interval="batch")
        self.out, self.frames = out, []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.frames.append(prediction)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        frame = pd.concat(self.frames, ignore_index=True) if self.frames else pd.DataFrame(columns=_COLUMNS)
        frame.to_parquet(shard_path(self.out, trainer.global_rank), index=False)


def shard_path(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.name}.shard-{rank}.parquet")


def merge_shards(out: Path, world_size: int) -> int:
    """Concatenates rank shards into ``out`` (atomically), dropping rows the distributed sampler repeated."""
    shards = [shard_path(out, r) for r in range(world_size)]
    recs = pd.concat([pd.read_parquet(s) for s in shards], ignore_index=True)
    recs = recs.drop_duplicates(["user_id", "rank"]).reset_index(drop=True)
    tmp = out.with_name(f"{out.name}.partial")
    recs.to_parquet(tmp, index=False)
    tmp.replace(out)  # a crash never leaves a truncated file under the final name
    for shard in shards:
        shard.unlink()
    return len(recs)


def score_users(export_dir: str | Path, out: str | Path, k: int = 100, split: str = "test",
                user_ids: list[str] | None = None, users_file: str | Path | None = None, batch_size: int = 512,
                accelerator: str = "cpu", devices: int | str = 1, strategy: str = "auto", num_nodes: int = 1) -> dict:
    """Writes each user's top-k (seen items excluded) to Parquet through a Lightning predict job.

    Users are the dataset's (with the history before their ``split`` target), or new users from ``users_file``.
    Under DDP every rank scores its share of users into its own shard; rank 0 merges them into ``out``.
    """
    _check_stage(split)
    export = ExportFolder.load(export_dir)
    if not 0 < k <= export.meta["num_items"]:
        raise ValueError(f"k must be in 1..{export.meta['num_items']} (the catalog size), got {k}.")
    request, report = new_user_request(export, users_file) if users_file else dataset_request(export, user_ids, split)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The tower runs under this trainer's autocast: use the precision its evaluation (and the export) used.
    precision = lightning_precision(export.encoder.precision)
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes,
                         precision=precision, logger=False, enable_checkpointing=False, callbacks=[ShardWriter(out)])
    loader = DataLoader(torch.arange(len(request.ids)), batch_size=batch_size)
    trainer.predict(UserScorer(export, request, k), loader, return_predictions=False)
    trainer.strategy.barrier()
    if trainer.is_global_zero:
        report["rows"] = merge_shards(out, trainer.world_size)
    return {"out": str(out), **report}


def evaluate_recommendations(recs_path: str | Path, export_dir: str | Path, split: str = "test",
                             ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Recall/NDCG/MRR@K against each user's held-out item, plus coverage, novelty and diversity at max K."""
    _check_stage(split)
    export = ExportFolder.load(export_dir)
    recs = pd.read_parquet(recs_path)
    missing = {"user_id", "item_id", "rank"} - set(recs.columns)
    if missing:
        raise ValueError(f"{recs_path} lacks column(s) {sorted(missing)}; write it with scripts/score_offline.py.")
    recs = recs.assign(user_id=recs["user_id"].astype(str), row=recs["item_id"].astype(str).map(export.item_rows))
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
    metrics.update({f"coverage@{depth}": catalog_coverage(table, len(export.items)),
                    f"novelty@{depth}": novelty(table, export.item_popularity),
                    f"diversity@{depth}": intra_list_diversity(table, export.vectors), "users": float(len(users))})
    return metrics
