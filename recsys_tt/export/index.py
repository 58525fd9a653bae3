"""FAISS indexes over L2-normalised item vectors, searched by inner product (= cosine similarity)."""

from __future__ import annotations

import logging
import time

import numpy as np

log = logging.getLogger(__name__)


def _faiss():
    try:
        import faiss
    except ImportError as err:
        raise ImportError("FAISS is needed: pip install -e '.[cpu]' (or '.[gpu]').") from err
    return faiss


def build_index(vectors: np.ndarray, factory: str = "Flat", search_params: str = ""):
    """Builds any index-factory string (Flat, HNSW32, IVF1024,Flat, IVF1024,PQ32, ...) over (N, D) vectors.

    Indexes that need training (IVF, PQ) are trained on the vectors themselves. Returns (index, seconds).
    """
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    started = time.perf_counter()
    try:
        index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ValueError(f"FAISS cannot build {factory!r} for dimension {vectors.shape[1]}: {err}") from err
    building = _to_gpu(faiss, index)
    if not building.is_trained:
        building.train(vectors)
    building.add(vectors)
    if building is not index:
        index = faiss.index_gpu_to_cpu(building)  # the saved file is the same as a CPU build's
    if search_params:
        faiss.ParameterSpace().set_index_parameters(index, search_params)
    return index, time.perf_counter() - started


def _to_gpu(faiss, index):
    """A GPU copy of ``index`` to train and fill when faiss-gpu and a GPU are present, else ``index`` itself."""
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return index
    try:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    except RuntimeError as err:  # e.g. HNSW has no GPU version
        log.info("FAISS builds this index on the CPU (no GPU version: %s)", str(err).splitlines()[0])
        return index


def unit_length(vectors: np.ndarray) -> bool:
    """Whether every vector has length 1 (an index over them ranks by cosine); ``unseen_item_boost`` scales some."""
    return bool(np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3))


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) rows of the k highest inner products, best first (NumPy brute force; the reference)."""
    scores = queries @ vectors.T
    top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
    order = np.take_along_axis(scores, top, 1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, 1)


def recall_against_exact(index, queries: np.ndarray, vectors: np.ndarray, k: int = 10) -> float:
    """Fraction of the exact top-k that the index returns (1.0 for Flat)."""
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    exact = exact_top_k(queries, vectors, k)
    return float(np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact)]))
