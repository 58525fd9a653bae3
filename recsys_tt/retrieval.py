"""Top-K retrieval from a FAISS index with per-user exclusions (seen items never come back)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def search_excluding(index, queries: np.ndarray, k: int,
                     exclude: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(Q, k) item rows and scores, best first, without each query's excluded rows (padding: row -1, -inf).

    One query is searched with FAISS skipping its excluded rows itself (Flat, HNSW and IVF indexes), so the
    search is no deeper than k. A batch shares one search, k + (largest exclusion) deep, so an exact index still
    returns the exact top-k of what is left, and the excluded rows are dropped afterwards.
    """
    total = index.ntotal
    if not 0 < k <= total:
        raise ValueError(f"k must be in 1..{total} (the catalog size), got {k}.")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    params = exclusion_params(index, exclude[0]) if len(queries) == 1 else None
    if params is not None:
        scores, rows = index.search(queries, k, params=params)
        scores[rows < 0] = -np.inf  # FAISS pads with -FLT_MAX
        return rows, scores
    depth = min(total, k + max((len(e) for e in exclude), default=0))
    scores, rows = index.search(queries, depth)
    # Vectorised membership test: encode (query, row) pairs as single integers on both sides.
    offsets = np.arange(len(queries), dtype=np.int64) * (total + 1)
    banned = np.concatenate([np.asarray(e, dtype=np.int64) + o for e, o in zip(exclude, offsets)] or [[]])
    keep = (rows >= 0) & ~np.isin(rows + offsets[:, None], banned)
    first = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept results first, in score order
    kept = np.take_along_axis(keep, first, 1)
    out_rows = np.where(kept, np.take_along_axis(rows, first, 1), -1)
    out_scores = np.where(kept, np.take_along_axis(scores, first, 1), -np.inf).astype(np.float32)
    return out_rows, out_scores


def exclusion_params(index, excluded: np.ndarray):
    """FAISS search parameters that skip ``excluded`` rows inside the search, with the index's own settings.

    None for index types whose search settings are not carried over here (e.g. OPQ or refine wrappers):
    those take the deep search and drop excluded rows afterwards.
    """
    import faiss

    selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.asarray(excluded, dtype=np.int64)))
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=index.hnsw.efSearch,
                                          check_relative_distance=index.hnsw.check_relative_distance,
                                          bounded_queue=index.hnsw.search_bounded_queue)
    if isinstance(index, faiss.IndexIVF):
        return faiss.SearchParametersIVF(sel=selector, nprobe=index.nprobe, max_codes=index.max_codes)
    if isinstance(index, faiss.IndexFlat):
        return faiss.SearchParameters(sel=selector)
    return None
