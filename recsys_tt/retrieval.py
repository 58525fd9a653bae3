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
    out_rows = np.full((len(queries), k), -1, dtype=np.int64)
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for q, (found, found_scores) in enumerate(zip(rows, scores)):
        keep = (found >= 0) & ~np.isin(found, exclude[q])
        out_rows[q, : min(k, keep.sum())] = found[keep][:k]
        out_scores[q, : min(k, keep.sum())] = found_scores[keep][:k]
    return out_rows, out_scores
