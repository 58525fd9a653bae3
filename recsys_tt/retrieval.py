"""Top-K retrieval from a FAISS index with per-user exclusions (seen items never come back)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def search_excluding(index, queries: np.ndarray, k: int,
                     exclude: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k) item rows and scores, best first, without each query's excluded rows (padding: row -1, -inf).

    It searches k + (largest exclusion) deep, so an exact index still returns the exact top-k of what is left.
    """
    total = index.ntotal
    if not 0 < k <= total:
        raise ValueError(f"k must be in 1..{total} (the catalog size), got {k}.")
    depth = min(total, k + max((len(e) for e in exclude), default=0))
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), depth)
    if len(queries) == 1:  # serving's case: a set over ~k results costs less than a dozen small array calls
        banned = set(np.asarray(exclude[0]).tolist())
        kept = [i for i, row in enumerate(rows[0].tolist()) if row >= 0 and row not in banned][:k]
        out_rows, out_scores = np.full((1, k), -1, dtype=rows.dtype), np.full((1, k), -np.inf, dtype=np.float32)
        out_rows[0, : len(kept)], out_scores[0, : len(kept)] = rows[0, kept], scores[0, kept]
        return out_rows, out_scores
    # Vectorised membership test: encode (query, row) pairs as single integers on both sides.
    offsets = np.arange(len(queries), dtype=np.int64) * (total + 1)
    banned = np.concatenate([np.asarray(e, dtype=np.int64) + o for e, o in zip(exclude, offsets)] or [[]])
    keep = (rows >= 0) & ~np.isin(rows + offsets[:, None], banned)
    first = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept results first, in score order
    kept = np.take_along_axis(keep, first, 1)
    out_rows = np.where(kept, np.take_along_axis(rows, first, 1), -1)
    out_scores = np.where(kept, np.take_along_axis(scores, first, 1), -np.inf).astype(np.float32)
    return out_rows, out_scores
