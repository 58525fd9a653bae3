"""Full-catalog ranking metrics with one held-out target per user (leave-one-out)."""

from __future__ import annotations

import torch


def catalog_scores(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """(B, D) x (N, D) -> (B, N) in float32 even under autocast: bf16 scores would create ties in rankings."""
    with torch.autocast(users.device.type, enabled=False):
        return users.float() @ items.float().T


def exclude_seen(scores: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """scores (B, N); seen (B, S) item indices padded with -1 -> scores with seen items at -inf."""
    rows = torch.arange(scores.shape[0], device=scores.device).unsqueeze(1).expand_as(seen)
    valid = seen >= 0
    return scores.index_put((rows[valid], seen[valid]), torch.tensor(float("-inf"), device=scores.device))


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's target among all items: the number of items scored strictly higher."""
    target_scores = scores.gather(1, targets.unsqueeze(1))  # (B, 1)
    return (scores > target_scores).sum(1)


def ranking_metrics(ranks: torch.Tensor, ks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Per-user Recall@K (= hit rate with one target), NDCG@K and MRR@K from 0-based ranks; each (B,)."""
    out = {}
    ranks = ranks.float()
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = hit.float()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))
        out[f"mrr@{k}"] = torch.where(hit, 1.0 / (ranks + 1.0), torch.zeros_like(ranks))
    return out
