"""Exploration and reranking math: greedy limits, reproducibility, and propensities against sampled frequencies."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from recsys_tt.serving.explore import ExplorationConfig, explore, pick_probabilities, policy_scores, sample_slates
from recsys_tt.serving.rerank import mmr
from recsys_tt.serving.uncertainty import ItemUncertainty

SCORES = np.array([0.9, 0.7, 0.65, 0.3, 0.1])
CHI2_DF19_P001 = 43.82  # chi-square critical value: 19 degrees of freedom, p = 0.001


@pytest.mark.parametrize("temperature", [0.0, 1e-8])
def test_temperature_to_zero_is_the_argmax_slate_for_any_seed(temperature):
    config = ExplorationConfig(temperature=temperature)
    warnings.simplefilter("error")  # the smallest temperature must not overflow the sampling keys
    for seed in range(20):
        slate = explore(SCORES, 3, config, temperature, np.random.default_rng(seed))
        assert slate.picks.tolist() == [0, 1, 2]
        assert slate.probability == pytest.approx(1.0) and np.allclose(slate.position_propensity, 1.0)


def test_a_fixed_seed_reproduces_a_slate_and_seeds_differ():
    config = ExplorationConfig(temperature=1.0, epsilon=0.2)
    first = explore(SCORES, 3, config, 1.0, np.random.default_rng(7))
    again = explore(SCORES, 3, config, 1.0, np.random.default_rng(7))
    assert first.picks.tolist() == again.picks.tolist() and first.probability == again.probability
    slates = {tuple(explore(SCORES, 3, config, 1.0, np.random.default_rng(s)).picks) for s in range(30)}
    assert len(slates) > 5


UNCERTAINTY = np.array([0.0, 0.1, 0.2, 1.0, 1.0])  # the two worst-scored candidates were never observed


@pytest.mark.parametrize("epsilon, head, bonus", [(0.0, 0, 0.0), (0.3, 0, 0.0), (0.1, 1, 0.0), (0.0, 0, 0.5),
                                                  (0.1, 1, 0.5)])
def test_sampled_slate_frequencies_match_the_logged_slate_probabilities(epsilon, head, bonus):
    """Chi-square test over every ordered slate of 2 out of 5 candidates (one impossible slate set with a head),
    undirected and directed by an uncertainty bonus."""
    temperature, draws = 0.25, 40_000
    scores = policy_scores(SCORES, UNCERTAINTY, bonus)
    samples = sample_slates(scores, 2, temperature, head, epsilon, np.random.default_rng(0), draws)
    counts = {}
    for slate in map(tuple, samples):
        counts[slate] = counts.get(slate, 0) + 1
    slates = list(itertools.permutations(range(5), 2))
    probs = np.array([np.prod(pick_probabilities(scores, np.array(s), temperature, head, epsilon)) for s in slates])
    assert probs.sum() == pytest.approx(1.0)
    observed = np.array([counts.get(s, 0) for s in slates])
    possible = probs > 0
    assert observed[~possible].sum() == 0  # e.g. with a head, every slate starts with the best candidate
    expected = probs[possible] * draws
    chi2 = ((observed[possible] - expected) ** 2 / expected).sum()
    assert chi2 < CHI2_DF19_P001, f"chi2 = {chi2:.1f}: sampled slates do not follow the logged probabilities"


def test_position_propensities_match_position_frequencies():
    config = ExplorationConfig(temperature=0.25, epsilon=0.1, propensity_samples=20_000)
    slate = explore(SCORES, 3, config, 0.25, np.random.default_rng(1))
    check = sample_slates(SCORES, 3, 0.25, 0, 0.1, np.random.default_rng(99), 50_000)
    frequency = (check == slate.picks[None, :]).mean(axis=0)
    assert np.allclose(slate.position_propensity, frequency, atol=0.01)
    assert slate.pick_probability[0] == pytest.approx(slate.position_propensity[0], abs=0.01)  # first = marginal


def test_a_bonus_moves_uncertain_items_up_below_the_head_and_logs_exact_propensities():
    config = ExplorationConfig(temperature=0.0, head=1, bonus=0.5)
    slate = explore(SCORES, 3, config, 0.0, np.random.default_rng(0), UNCERTAINTY)
    assert slate.picks.tolist() == [0, 3, 1]  # head by score; then 0.3 + 0.5 beats 0.7 + 0.05
    assert slate.probability == 1.0 and np.allclose(slate.position_propensity, 1.0)
    sampled = ExplorationConfig(temperature=0.25, bonus=0.5, propensity_samples=20_000)
    slate = explore(SCORES, 3, sampled, 0.25, np.random.default_rng(1), UNCERTAINTY)
    check = sample_slates(policy_scores(SCORES, UNCERTAINTY, 0.5), 3, 0.25, 0, 0.0, np.random.default_rng(9), 50_000)
    assert np.allclose(slate.position_propensity, (check == slate.picks[None, :]).mean(axis=0), atol=0.01)
    undirected = sample_slates(SCORES, 3, 0.25, 0, 0.0, np.random.default_rng(9), 50_000)
    assert (check == 3).mean() > 2 * (undirected == 3).mean()  # the never-observed item is shown far more often


def test_uncertainty_is_one_unobserved_and_shrinks_with_interactions_and_impressions():
    uncertainty = ItemUncertainty(np.array([0, 10, 0]), pseudo_count=10.0, impression_weight=0.1)
    assert uncertainty(np.arange(3)).tolist() == pytest.approx([1.0, 2**-0.5, 1.0])
    uncertainty.observe([2] * 100)  # 100 impressions count as 10 observations
    assert uncertainty(np.array([2]))[0] == pytest.approx(2**-0.5)
    uncertainty.observe([0])
    values = uncertainty(np.arange(3))
    assert 2**-0.5 < values[0] < 1.0 and values[1] == values[2]


def test_a_deterministic_head_keeps_the_best_items_on_top():
    config = ExplorationConfig(temperature=5.0, head=2)
    for seed in range(10):
        slate = explore(SCORES, 4, config, 5.0, np.random.default_rng(seed))
        assert slate.picks[:2].tolist() == [0, 1] and slate.pick_probability[:2].tolist() == [1.0, 1.0]


def test_adaptive_temperature_is_larger_for_short_histories():
    config = ExplorationConfig(temperature=0.1, adaptive_boost=1.0, adaptive_half_life=10)
    assert config.user_temperature(0) == pytest.approx(0.2)
    assert config.user_temperature(10) == pytest.approx(0.15)
    assert config.user_temperature(1000) < 0.101
    assert ExplorationConfig(temperature=0.1).user_temperature(0) == 0.1


@pytest.mark.parametrize("field, value", [("temperature", -1.0), ("temperature", float("nan")), ("temperature", 1e-300),
                                          ("epsilon", 1.5),
                                          ("head", -1), ("adaptive_half_life", 0.0), ("bonus", -0.1),
                                          ("bonus", float("inf")), ("bonus_pseudo_count", 0.0),
                                          ("impression_weight", 2.0)])
def test_nonsense_exploration_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        ExplorationConfig(**{field: value})


def test_mmr_with_lambda_one_is_relevance_order_and_lower_lambda_demotes_near_duplicates():
    scores = np.array([0.5, 0.9, 0.8, 0.7])
    vectors = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])  # items 1 and 2 are duplicates
    order, final = mmr(scores, vectors, 1.0)
    assert order.tolist() == [1, 2, 3, 0] and final.tolist() == [0.9, 0.8, 0.7, 0.5]
    order, _ = mmr(scores, vectors, 0.5)
    assert order[0] == 1 and order.tolist().index(2) == 3  # the duplicate drops to the end
    with pytest.raises(ValueError, match="diversity_lambda"):
        mmr(scores, vectors, 1.5)
