"""Cold-start item evaluation: can the model rank items it never trained on (known only by their text)?

Cold items are the export's items with no training interaction, so they have no trained id vector and the
model scores them from text alone; an id-only model (BPR, SASRec) can only rank them at random. For every user
whose later interactions (a future table, e.g. from scripts/split_by_time.py) include cold items, the cold items
they have not seen are ranked by the user's vector, and the later ones are the targets.
"""

from __future__ import annotations

import numpy as np

from recsys_tt.data import read_table, require_columns
from recsys_tt.export import ExportFolder


def cold_item_metrics(export: ExportFolder, future: str, k: int = 10) -> dict[str, float]:
    """Recall@k, hit rate@k and NDCG@k of users' future cold items ranked among all unseen cold items."""
    frame = read_table(future)
    require_columns(frame, ["user_id", "item_id"], future)
    cold = np.flatnonzero(export.items["train_count"].to_numpy() == 0)
    rows = frame["item_id"].astype(str).map(export.item_rows)
    frame = frame.assign(user_id=frame["user_id"].astype(str), row=rows)[rows.isin(cold)]
    users = {u: i for i, u in enumerate(export.users["user_id"].astype(str))}
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
        ideal = (1 / np.log2(np.arange(min(k, len(wanted))) + 2)).sum()
        recall.append(gains.sum() / len(wanted))
        hits.append(float(gains.any()))
        ndcg.append((gains / np.log2(np.arange(len(top)) + 2)).sum() / ideal)
        random_recall.append(min(k, len(candidates)) / len(candidates))
    return {f"recall@{k}": float(np.mean(recall)), f"hit_rate@{k}": float(np.mean(hits)),
            f"ndcg@{k}": float(np.mean(ndcg)), f"random_recall@{k}": float(np.mean(random_recall)),
            "users": len(recall), "cold_items": len(cold)}
