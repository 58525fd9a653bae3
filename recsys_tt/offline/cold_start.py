"""Cold-start evaluation: how well the model serves items and users it never trained on.

Cold items are the export's items with no training interaction, so they have no trained id vector and the
model scores them from text alone; an id-only model (BPR, SASRec) can only rank them at random. For every user
whose later interactions (a future table, e.g. from scripts/split_by_time.py) include cold items, the cold items
they have not seen are ranked by the user's vector, and the later ones are the targets.

New users are users absent from training (scripts/split_new_users.py holds some out). Each is served as the
serving path serves a stranger: their profile text plus their first n items, for several n (n = 0: text alone,
where an id model has nothing but popularity). The whole catalog, minus those n items, is ranked against their
next item (as the leave-one-out metrics do) and against all their later items.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys_tt.data.examples import pad_rows
from recsys_tt.data.tables import DataError, parse_timestamps, read_ids, user_sequences
from recsys_tt.data.text import render_table
from recsys_tt.export.folder import ExportFolder
from recsys_tt.model.metrics import discount, exclude_seen, ranking_metrics, target_ranks


def cold_item_metrics(export: ExportFolder, future: str, k: int = 10) -> dict[str, float]:
    """Recall@k, hit rate@k and NDCG@k of users' future cold items ranked among all unseen cold items."""
    frame = read_ids(future, ["user_id", "item_id"])
    cold = np.flatnonzero(export.items["train_count"].to_numpy() == 0)
    rows = frame["item_id"].map(export.item_rows)
    frame = frame.assign(row=rows)[rows.isin(cold)]
    users = export.user_rows
    frame = frame[frame["user_id"].isin(users)]
    targets = frame.groupby("user_id")["row"].apply(lambda r: set(r.astype(int)))
    indices = np.asarray([users[u] for u in targets.index])
    if not len(indices):
        raise ValueError(f"No user in {future} has a later interaction with one of the export's "
                         f"{len(cold)} cold items.")
    vectors = export.user_vectors(indices, "all")
    scores = vectors @ export.vectors[cold].T  # (U, cold)
    recall, hits, ndcg, random_recall = [], [], [], []
    for u, (index, wanted) in enumerate(zip(indices, targets)):
        unseen = ~np.isin(cold, export.split.history(index, "all"))
        candidates, user_scores = cold[unseen], scores[u, unseen]
        wanted = wanted & set(candidates.tolist())
        if not wanted:
            continue
        top = candidates[np.argsort(-user_scores, kind="stable")[:k]]
        gains = np.isin(top, list(wanted))
        ideal = discount(np.arange(min(k, len(wanted)))).sum()
        recall.append(gains.sum() / len(wanted))
        hits.append(float(gains.any()))
        ndcg.append((gains * discount(np.arange(len(top)))).sum() / ideal)
        random_recall.append(min(k, len(candidates)) / len(candidates))
    return {f"recall@{k}": float(np.mean(recall)), f"hit_rate@{k}": float(np.mean(hits)),
            f"ndcg@{k}": float(np.mean(ndcg)), f"random_recall@{k}": float(np.mean(random_recall)),
            "users": len(recall), "cold_items": len(cold)}


def new_user_metrics(export: ExportFolder, interactions: str, users: str | None, context_sizes: list[int],
                     k: int = 10) -> list[dict]:
    """One row per (context size, ranker): next-item Recall/NDCG@k and precision@k of all later items.

    Rankers: recsys_tt with the profile text (given a users table), recsys_tt without it (items alone), and
    training popularity.
    """
    if k <= 0 or any(n < 0 for n in context_sizes):
        raise ValueError(f"k must be positive and context_sizes non-negative, got {k} and {context_sizes}.")
    user_ids, sequences = _new_user_sequences(export, interactions)
    profiles = _profiles(export, users, user_ids)
    counts = export.items["train_count"].to_numpy()
    popularity = torch.as_tensor(np.argsort(np.argsort(counts, kind="stable")), dtype=torch.float32)  # no ties
    rows = []
    for n in context_sizes:
        chosen = [i for i, seq in enumerate(sequences) if len(seq) > n]
        if not chosen:
            raise ValueError(f"No user in {interactions} has more than {n} interactions; lower context_sizes.")
        context = [sequences[i][:n] for i in chosen]
        later = [sequences[i][n:] for i in chosen]
        rankers = {"recsys_tt, profile + items": [profiles[i] for i in chosen]} if users else {}
        rankers["recsys_tt, items only"] = [""] * len(chosen)
        for name, texts in rankers.items():
            scores = torch.from_numpy(export.new_user_vectors(texts, context) @ export.vectors.T)
            rows.append({"context_items": n, "ranker": name, **_later_item_metrics(scores, context, later, k)})
        scores = popularity.expand(len(chosen), -1)
        rows.append({"context_items": n, "ranker": "popularity", **_later_item_metrics(scores, context, later, k)})
    return rows


def _new_user_sequences(export: ExportFolder, interactions: str) -> tuple[list[str], list[np.ndarray]]:
    frame = read_ids(interactions, ["user_id", "item_id"], ("timestamp",))
    rows = frame["item_id"].map(export.item_rows)
    if rows.isna().any():
        raise DataError(f"{interactions}: {int(rows.isna().sum())} interactions name items the export lacks (first: "
                        f"{frame['item_id'][rows.isna()].iloc[0]!r}); add them with scripts/add_items.py.")
    known = frame["user_id"].isin(export.user_rows)
    if known.any():
        raise DataError(f"{interactions}: user {frame['user_id'][known].iloc[0]!r} was in training; new users must "
                        "not be (scripts/split_new_users.py holds users out).")
    return user_sequences(frame["user_id"], rows.astype("int64"),
                          parse_timestamps(frame["timestamp"], interactions))


def _profiles(export: ExportFolder, users: str | None, user_ids: list[str]) -> list[str]:
    """Profile texts through the export's template, or none without a users table."""
    if users is None:
        return []
    table = read_ids(users, ["user_id"]).set_index("user_id")
    missing = [u for u in user_ids if u not in table.index]
    if missing:
        raise DataError(f"{users} has no row for user {missing[0]!r} ({len(missing)} missing).")
    return render_table(export.templates.profile, table.loc[user_ids], "user")


def _later_item_metrics(scores: torch.Tensor, context: list[np.ndarray], later: list[np.ndarray],
                        k: int) -> dict[str, float]:
    scores = exclude_seen(scores.float(), pad_rows(context))
    next_item = torch.as_tensor([seq[0] for seq in later])
    metrics = ranking_metrics(target_ranks(scores, next_item), (k,))
    top = scores.topk(k, dim=1).indices.numpy()
    precision = [np.isin(t, seq).mean() for t, seq in zip(top, later)]
    return {f"next_recall@{k}": float(metrics[f"recall@{k}"].mean()),
            f"next_ndcg@{k}": float(metrics[f"ndcg@{k}"].mean()),
            f"later_precision@{k}": float(np.mean(precision)), "users": len(later)}
