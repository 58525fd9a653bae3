"""Full-catalog ranking metrics with one held-out target per user (leave-one-out)."""

from __future__ import annotations

import numpy as np
import torch


def catalog_scores(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """(B, D) x (N, D) -> (B, N) in float32 even under autocast: bf16 scores would create ties in rankings."""
    with torch.autocast(users.device.type, enabled=False):
        return users.float() @ items.float().T


def slate_scores(users: torch.Tensor, items: torch.Tensor, shown: torch.Tensor) -> torch.Tensor:
    """users (S, D), item vectors (N, D), shown (S, K) rows padded with -1 -> (S, K) each shown item's score for
    its slate's user (0 at padding)."""
    return torch.einsum("sd,skd->sk", users, items[shown.clamp(min=0)]) * (shown >= 0)


def exclude_seen(scores: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """scores (B, N); seen (B, S) item indices padded with -1 -> scores with seen items at -inf."""
    rows = torch.arange(scores.shape[0], device=scores.device).unsqueeze(1).expand_as(seen)
    valid = seen >= 0
    return scores.index_put((rows[valid], seen[valid]), torch.tensor(float("-inf"), device=scores.device))


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's target among all items, ties counted against it: the number of other items scored
    at least as high. A model that scores many items alike (a constant, a saturated bf16 score) gains nothing from
    the tie; a NaN target score ranks last."""
    target_scores = scores.gather(1, targets.unsqueeze(1))  # (B, 1)
    at_least = (scores >= target_scores).sum(1) - 1
    return torch.where(target_scores.squeeze(1).isnan(), scores.shape[1] - 1, at_least)


def discount(ranks):
    """DCG's position discount 1 / log2(rank + 2) of 0-based ranks (a tensor or an array)."""
    log2 = torch.log2 if isinstance(ranks, torch.Tensor) else np.log2
    return 1.0 / log2(ranks + 2.0)


def ranking_metrics(ranks: torch.Tensor, ks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Per-user Recall@K (= hit rate with one target), NDCG@K and MRR@K from 0-based ranks; each (B,)."""
    out = {}
    ranks = ranks.float()
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = hit.float()
        out[f"ndcg@{k}"] = torch.where(hit, discount(ranks), torch.zeros_like(ranks))
        out[f"mrr@{k}"] = torch.where(hit, 1.0 / (ranks + 1.0), torch.zeros_like(ranks))
    return out


def catalog_coverage(recommended: np.ndarray, num_items: int) -> float:
    """Share of the catalog that appears in any list; recommended (U, K) item rows, -1 padding."""
    return float(len(np.unique(recommended[recommended >= 0])) / num_items)


def novelty(recommended: np.ndarray, item_popularity: np.ndarray) -> float:
    """Mean self-information -log2 p(item) of recommended items; popularity is the share of users per item."""
    valid = recommended[recommended >= 0]
    return float(np.mean(-np.log2(item_popularity[valid]))) if len(valid) else 0.0


def intra_list_diversity(recommended: np.ndarray, vectors: np.ndarray) -> float:
    """Mean pairwise cosine distance (1 - cos) inside each list, averaged over lists of two or more items."""
    values = []
    for row in recommended:
        items = vectors[row[row >= 0]]
        if len(items) >= 2:
            sims = items @ items.T
            n = len(items)
            values.append(1.0 - (sims.sum() - np.trace(sims)) / (n * (n - 1)))
    return float(np.mean(values)) if values else 0.0
