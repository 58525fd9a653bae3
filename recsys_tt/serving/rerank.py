"""Reranking retrieved candidates: exact rescoring, a pluggable scorer, and MMR diversity."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class CandidateScorer(Protocol):
    """A second-stage scorer (e.g. a cross-encoder): new scores for a user's candidates, higher = better."""

    def __call__(self, user_vector: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> np.ndarray: ...


def exact_scores(user_vector: np.ndarray, vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(C,) float32 inner products of one user with the stored vectors of candidate rows (ANN scores are rough)."""
    return vectors[rows] @ user_vector.astype(np.float32)


def mmr(scores: np.ndarray, vectors: np.ndarray, diversity_lambda: float) -> tuple[np.ndarray, np.ndarray]:
    """Maximal marginal relevance order of all candidates: (order, MMR score of each pick).

    Each step picks argmax  lambda * score - (1 - lambda) * max cosine to the picks so far. lambda = 1 is pure
    relevance order (scores unchanged); smaller lambda pushes near-duplicates of earlier picks down.
    """
    if not 0 <= diversity_lambda <= 1:
        raise ValueError(f"diversity_lambda must be in [0, 1], got {diversity_lambda}.")
    if diversity_lambda == 1:
        order = np.argsort(-scores, kind="stable")
        return order, scores[order]
    similarity = vectors @ vectors.T
    closest = np.full(len(scores), -np.inf)  # max similarity to anything picked so far
    available = np.ones(len(scores), dtype=bool)
    order, gains = np.empty(len(scores), dtype=np.int64), np.empty(len(scores))
    for step in range(len(scores)):
        penalty = np.where(np.isfinite(closest), closest, 0.0)
        gain = np.where(available, diversity_lambda * scores - (1 - diversity_lambda) * penalty, -np.inf)
        pick = int(gain.argmax())
        order[step], gains[step] = pick, gain[pick]
        available[pick] = False
        closest = np.maximum(closest, similarity[pick])
    return order, gains
