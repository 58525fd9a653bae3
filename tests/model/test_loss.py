from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from recsys_tt.model.loss import (
    InBatchSoftmax,
    LossConfig,
    dcg_examination,
    position_based_loss,
    sampled_softmax_loss,
)


def _reference(user, item, positive, temperature, logq=None, masked=()):
    """Loop-by-loop cross-entropy, written independently of the vectorised loss."""
    total = 0.0
    for i in range(len(user)):
        logits = []
        for j in range(len(item)):
            if (i, j) in masked:
                continue
            value = float(user[i] @ item[j]) / temperature - (float(logq[j]) if logq is not None else 0.0)
            logits.append((j, value))
        norm = math.log(sum(math.exp(v) for _, v in logits))
        total += norm - dict(logits)[int(positive[i])]
    return total / len(user)


def _vectors(rows, dim=4, seed=0):
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_matches_hand_computed_reference_with_logq():
    user, item = _vectors(3), _vectors(5, seed=1)
    positive = torch.tensor([0, 2, 4])
    logq = torch.log(torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1]))
    got = sampled_softmax_loss(user, item, positive, torch.tensor(0.1), logq=logq)
    assert got.item() == pytest.approx(_reference(user, item, positive, 0.1, logq), rel=1e-5)


def test_logq_sign_penalises_popular_items():
    """With logQ, a popular negative contributes less; the loss must fall when a negative's q grows."""
    user, item = _vectors(1), _vectors(3, seed=2)
    positive = torch.tensor([0])
    uniform = sampled_softmax_loss(user, item, positive, torch.tensor(0.2), logq=torch.log(torch.full((3,), 1 / 3)))
    popular_negative = torch.log(torch.tensor([0.1, 0.8, 0.1]))
    corrected = sampled_softmax_loss(user, item, positive, torch.tensor(0.2), logq=popular_negative)
    assert corrected < uniform
    logits = user @ item.T / 0.2 - popular_negative
    assert corrected.item() == pytest.approx(F.cross_entropy(logits, positive).item(), rel=1e-6)


def test_accidental_hits_are_masked():
    """Item 7 is the positive of rows 0 and 1 in separate columns: neither column is the other row's negative."""
    user, item = _vectors(3), _vectors(4, seed=3)
    ids = torch.tensor([7, 3, 7, 9])
    positive = torch.tensor([0, 2, 3])
    got = sampled_softmax_loss(user, item, positive, torch.tensor(0.1), item_ids=ids)
    expected = _reference(user, item, positive, 0.1, masked={(0, 2), (1, 0)})
    assert got.item() == pytest.approx(expected, rel=1e-5)
    unmasked = sampled_softmax_loss(user, item, positive, torch.tensor(0.1))
    assert unmasked.item() != pytest.approx(expected, rel=1e-5)


def test_padding_columns_do_not_change_the_loss():
    user, item = _vectors(2), _vectors(3, seed=4)
    positive = torch.tensor([0, 1])
    plain = sampled_softmax_loss(user, item, positive, torch.tensor(0.1), item_ids=torch.tensor([0, 1, 2]))
    padded = torch.cat([item, torch.zeros(2, 4)])
    with_pad = sampled_softmax_loss(user, padded, positive, torch.tensor(0.1), item_ids=torch.tensor([0, 1, 2, -1, -1]))
    assert with_pad.item() == pytest.approx(plain.item(), rel=1e-6)


def test_temperature_divides_similarities_and_is_clamped():
    user, item = _vectors(2), _vectors(2, seed=5)
    positive = torch.tensor([0, 1])
    sharp = sampled_softmax_loss(user, item, positive, torch.tensor(0.5))
    assert sharp.item() == pytest.approx(F.cross_entropy(user @ item.T / 0.5, positive).item(), rel=1e-6)
    module = InBatchSoftmax(LossConfig(temperature=0.05, min_temperature=0.02), num_items=2)
    with torch.no_grad():
        module.log_temperature.fill_(math.log(1e-4))
    assert module.temperature.item() == pytest.approx(0.02)


def test_learnable_temperature_gets_a_gradient_and_logq_comes_from_counts():
    module = InBatchSoftmax(LossConfig(), num_items=3)
    module.set_item_counts(torch.tensor([6, 3, 0]))
    assert module.item_probs.tolist() == pytest.approx([7 / 12, 4 / 12, 1 / 12])
    loss = module(_vectors(2), _vectors(3, seed=6), torch.tensor([0, 2]), torch.tensor([0, 1, 2]))
    loss.backward()
    assert module.log_temperature.grad is not None and module.log_temperature.grad.abs() > 0


@pytest.mark.parametrize("bad", [dict(temperature=0.0), dict(min_temperature=0.1, temperature=0.05),
                                 dict(max_temperature=0.01)])
def test_contradictory_temperatures_are_refused(bad):
    with pytest.raises(ValueError, match="min_temperature"):
        LossConfig(**bad)


def test_column_logq_is_the_inclusion_probability_of_deduplicated_columns():
    module = InBatchSoftmax(LossConfig(), num_items=3)
    module.set_item_counts(torch.tensor([999_997, 0, 0]))  # q = [~1, 1e-6, 1e-6]
    logq = module.column_logq(torch.tensor([0, 1, -1]), draws=100)
    assert logq[0].item() == pytest.approx(0.0, abs=1e-6)  # always present: no correction
    assert logq[1].item() == pytest.approx(math.log(100 * 1e-6), rel=1e-3)  # rare: log(draws * q)


def _memory_loss(size: int) -> InBatchSoftmax:
    module = InBatchSoftmax(LossConfig(temperature=0.1, memory_size=size, learn_temperature=False), num_items=20)
    module.set_item_counts(torch.arange(20))
    return module


def test_without_memory_the_loss_is_the_plain_in_batch_loss():
    module = _memory_loss(0)
    user, item, items = _vectors(3), _vectors(3, seed=1), torch.tensor([4, 5, 6])
    positive = torch.tensor([0, 1, 2])
    plain = sampled_softmax_loss(user, item, positive, torch.tensor(0.1), logq=module.column_logq(items, 3),
                                 item_ids=items)
    for _ in range(2):  # a second batch sees no memory either
        assert torch.allclose(module(user, item, positive, items), plain)
    assert module.memory is None


def test_cross_batch_memory_adds_earlier_columns_with_their_logq_and_masks_their_hits():
    module = _memory_loss(4)
    first_item, first_ids = _vectors(3, seed=1), torch.tensor([4, 5, 6])
    module(_vectors(3), first_item, torch.tensor([0, 1, 2]), first_ids)
    first_logq = module.column_logq(first_ids, 3)
    user, item, items, positive = _vectors(2, seed=2), _vectors(2, seed=3), torch.tensor([6, 7]), torch.tensor([0, 1])
    got = module(user, item, positive, items)
    columns = torch.cat([item, first_item])
    logq = torch.cat([module.column_logq(items, 2), first_logq])
    masked = {(0, 4)}  # row 0's positive is item 6, which the memory holds in column 2 + 2
    assert math.isclose(float(got), _reference(user, columns, positive, 0.1, logq, masked), rel_tol=1e-5)
    assert module.memory[1].tolist() == [6, 7, 4, 5]  # newest first, capped at 4
    module.eval()
    assert torch.allclose(module(user, item, positive, items), sampled_softmax_loss(
        user, item, positive, torch.tensor(0.1), logq=module.column_logq(items, 2), item_ids=items))


def test_a_text_only_weight_below_zero_or_beside_a_memory_is_refused():
    with pytest.raises(ValueError, match="text_only is the weight"):
        LossConfig(text_only=-1.0)
    with pytest.raises(ValueError, match="does not combine with memory_size"):
        LossConfig(text_only=0.5, memory_size=64)


def test_negative_memory_size_is_refused():
    with pytest.raises(ValueError, match="memory_size"):
        LossConfig(memory_size=-1)


def test_catalog_negatives_are_the_full_softmax_without_logq():
    """Every item is a column: plain cross-entropy over the catalog, whatever the items' frequencies."""
    loss = InBatchSoftmax(LossConfig(temperature=0.1, negatives="catalog"), num_items=5)
    loss.set_item_counts(torch.tensor([100, 1, 1, 1, 1]))  # logQ would penalise item 0 heavily
    user, item = _vectors(3), _vectors(5, seed=4)
    positive = torch.tensor([0, 0, 3])
    got = loss(user, item, positive, torch.arange(5))
    assert got.item() == pytest.approx(_reference(user, item, positive, 0.1), rel=1e-5)
    with pytest.raises(ValueError, match="memory_size: 0"):
        LossConfig(negatives="catalog", memory_size=8)


def test_held_out_catalog_items_are_never_scored():
    """Cold items (data.cold_items): the softmax runs over the other items only, as if the held-out ones were absent."""
    loss = InBatchSoftmax(LossConfig(temperature=0.1, negatives="catalog"), num_items=5)
    user, item = _vectors(3), _vectors(5, seed=4)
    held_out = torch.tensor([False, True, False, False, True])
    got = loss(user, item, torch.tensor([0, 2, 3]), torch.arange(5), held_out=held_out)
    kept = item[~held_out]  # items 0, 2, 3 become columns 0, 1, 2
    assert got.item() == pytest.approx(_reference(user, kept, torch.tensor([0, 1, 2]), 0.1), rel=1e-5)
    assert got.item() < loss(user, item, torch.tensor([0, 2, 3]), torch.arange(5)).item()


def test_a_checkpoint_with_the_older_scalar_temperature_loads():
    old = {"log_temperature": torch.tensor(math.log(0.07))}  # saved before the parameter became (1,) for FSDP
    module = InBatchSoftmax(LossConfig(), num_items=3)
    module.load_state_dict(old)
    assert module.log_temperature.shape == (1,) and module.temperature.item() == pytest.approx(0.07)
    assert module.temperature.dim() == 0  # logged and divided by as a scalar


def _synthetic_log(seed: int = 0, items: int = 30, slates: int = 20_000, k: int = 5):
    """Slates from a logger that puts the least relevant items on top; clicks from the position-based model."""
    rng = np.random.default_rng(seed)
    relevance = rng.permutation(np.linspace(0.05, 0.6, items))
    exposure = (1 - relevance) ** 6  # the logger's (wrong) preference
    shown = np.stack([rng.choice(items, k, replace=False, p=exposure / exposure.sum()) for _ in range(slates)])
    looks = dcg_examination(k).numpy()
    clicked = rng.random((slates, k)) < looks * relevance[shown]
    return relevance, torch.as_tensor(shown), torch.as_tensor(clicked)


def _fit(loss_of, items: int, steps: int = 400) -> np.ndarray:
    logits = torch.zeros(items, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_of(logits).backward()
        optimizer.step()
    return logits.detach().numpy()


def test_the_position_based_objective_recovers_a_known_click_model_where_clicks_alone_do_not():
    relevance, shown, clicked = _synthetic_log()
    everywhere = torch.ones_like(clicked)
    debiased = _fit(lambda theta: position_based_loss(theta[shown], clicked, everywhere, dcg_examination(5)), 30)
    error = np.abs(1 / (1 + np.exp(-debiased)) - relevance)
    assert error.mean() < 0.03 and error.max() < 0.1  # calibrated, not just ordered (rarely shown items: +-0.07)
    clicks_only = _fit(lambda theta: F.cross_entropy(theta.expand(int(clicked.sum()), -1), shown[clicked]), 30)
    no_positions = _fit(lambda theta: position_based_loss(theta[shown], clicked, everywhere, torch.ones(5)), 30)
    order = spearmanr(debiased, relevance).statistic
    assert order > 0.95
    assert spearmanr(clicks_only, relevance).statistic < 0.3  # learns what the logger showed, not what users like
    unlooked = np.abs(1 / (1 + np.exp(-no_positions)) - relevance)
    assert unlooked.mean() > 3 * error.mean()  # counting every skip as a dislike underrates every item


def test_the_relevance_link_is_fitted_to_logged_slates():
    relevance, shown, clicked = _synthetic_log(slates=4000)
    scores = torch.as_tensor(np.log(relevance / (1 - relevance)), dtype=torch.float32)[shown] * 0.05 + 0.3
    head = InBatchSoftmax(LossConfig(temperature=0.1), num_items=30)  # scores a twentieth of the true logits
    everywhere = torch.ones_like(clicked)
    before = head.impression_loss(scores, clicked, everywhere).item()
    head.calibrate(scores, clicked, everywhere)
    scale, bias = head.relevance_link.tolist()
    assert scale == pytest.approx(20, rel=0.15) and bias == pytest.approx(-6, abs=1.0)  # the true link
    assert head.impression_loss(scores, clicked, everywhere).item() < before
    link = head.relevance_link.clone().requires_grad_(True)
    position_based_loss(scores * link[0] + link[1], clicked, everywhere, dcg_examination(5)).backward()
    assert link.grad.abs().max() < 1e-3  # a fitted optimum, held for the run: not a parameter
    assert "relevance_link" not in dict(head.named_parameters())
    with pytest.raises(ValueError, match="loss.examination has 1 positions"):
        InBatchSoftmax(LossConfig(examination=[1.0]), num_items=4).impression_loss(scores, clicked, everywhere)
    with pytest.raises(ValueError, match="examination holds probabilities"):
        LossConfig(examination=[1.0, 0.0])
