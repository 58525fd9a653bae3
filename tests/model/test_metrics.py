"""Ranking and beyond-accuracy metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys_tt.model.metrics import (
    catalog_coverage,
    catalog_scores,
    exclude_seen,
    intra_list_diversity,
    novelty,
    ranking_metrics,
    target_ranks,
)


def test_ranks_count_better_and_tied_items_after_excluding_seen_ones():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.1, 0.5, 0.5, 0.9]])
    seen = torch.tensor([[0, -1], [3, 1]])
    masked = exclude_seen(scores, seen)
    assert torch.isinf(masked[0, 0]) and torch.isinf(masked[1, 3]) and torch.isinf(masked[1, 1])
    # row 0: target item 2, item 1 (0.8) is above it once item 0 is excluded; row 1: item 2 ties with nothing left
    assert target_ranks(masked, torch.tensor([2, 2])).tolist() == [1, 0]
    assert target_ranks(scores, torch.tensor([2, 2])).tolist() == [2, 2]  # the tie (0.5 = 0.5) counts against it


def test_constant_scores_rank_every_target_last_and_nan_targets_miss():
    assert target_ranks(torch.zeros(2, 5), torch.tensor([0, 3])).tolist() == [4, 4]
    scores = torch.tensor([[float("nan"), 0.2, 0.1]])
    assert target_ranks(scores, torch.tensor([0])).tolist() == [2]


def test_recall_ndcg_and_mrr_at_k_have_their_textbook_values():
    metrics = ranking_metrics(torch.tensor([0, 1, 4, 9, 10]), (1, 5, 10))
    assert metrics["recall@1"].tolist() == [1, 0, 0, 0, 0]
    assert metrics["recall@5"].tolist() == [1, 1, 1, 0, 0]
    assert metrics["recall@10"].tolist() == [1, 1, 1, 1, 0]
    expected_ndcg = [1.0, 1 / math.log2(3), 1 / math.log2(6), 1 / math.log2(11), 0.0]
    assert metrics["ndcg@10"].tolist() == pytest.approx(expected_ndcg)
    assert metrics["ndcg@5"].tolist() == pytest.approx(expected_ndcg[:3] + [0.0, 0.0])
    assert metrics["mrr@10"].tolist() == pytest.approx([1.0, 0.5, 0.2, 0.1, 0.0])


def test_scores_stay_float32_under_bf16_autocast():
    users, items = torch.randn(2, 8), torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = catalog_scores(users, items)
    assert scores.dtype == torch.float32 and torch.allclose(scores, users @ items.T)


def test_coverage_novelty_and_diversity():
    recommended = np.array([[0, 1, -1], [1, 2, -1]])
    assert catalog_coverage(recommended, num_items=6) == pytest.approx(0.5)
    popularity = np.array([0.5, 0.25, 0.125, 1.0])
    assert novelty(recommended, popularity) == pytest.approx((1 + 2 + 2 + 3) / 4)  # -log2 of 0.5, 0.25, 0.25, 0.125
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    # list 0: orthogonal items (distance 1); list 1: identical items (distance 0)
    assert intra_list_diversity(recommended, vectors) == pytest.approx(0.5)
    assert intra_list_diversity(np.array([[0, -1]]), vectors) == 0.0  # no list of two items
