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
    lengths = [len(e) for e in exclude]
    depth = min(total, k + max(lengths, default=0))
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), depth)
    if len(queries) == 1:  # serving's case: set lookups over ~k results beat a dozen small array calls
        banned = {-1, *np.asarray(exclude[0]).tolist()}  # -1: FAISS found fewer rows than asked for
        kept = np.array([i for i, row in enumerate(rows[0].tolist()) if row not in banned][:k], dtype=np.intp)
        if len(kept) == k:  # else fewer than k are left, and the general path below pads the rest
            return rows.take(kept, 1), scores.take(kept, 1)
    # Vectorised membership test: (query, row) pairs coded as single integers, looked up in the sorted exclusions.
    offsets = np.arange(len(queries), dtype=np.int64) * (total + 1)
    # A stable sort (timsort/radix) runs through codes that come already grouped by query far faster than quicksort.
    banned = np.sort(np.concatenate([np.asarray(e, dtype=np.int64) for e in exclude] or [np.zeros(0, np.int64)])
                     + np.repeat(offsets, lengths), kind="stable")
    coded = rows + offsets[:, None]
    keep = rows >= 0
    if len(banned):
        keep &= banned[np.searchsorted(banned, coded).clip(max=len(banned) - 1)] != coded
    slot = np.cumsum(keep, axis=1) - 1  # where each kept result goes: they stay in score order
    keep &= slot < k
    out_rows, out_scores = np.full((len(rows), k), -1, dtype=rows.dtype), np.full((len(rows), k), -np.inf, np.float32)
    query = np.nonzero(keep)[0]
    out_rows[query, slot[keep]], out_scores[query, slot[keep]] = rows[keep], scores[keep]
    return out_rows, out_scores
