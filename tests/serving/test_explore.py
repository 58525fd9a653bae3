"""Exploration and reranking math: greedy limits, reproducibility, and propensities against sampled frequencies."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from recsys_tt.serving.explore import ExplorationConfig, explore, pick_probabilities, sample_slates
from recsys_tt.serving.rerank import mmr

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


@pytest.mark.parametrize("epsilon, head", [(0.0, 0), (0.3, 0), (0.1, 1)])
def test_sampled_slate_frequencies_match_the_logged_slate_probabilities(epsilon, head):
    """Chi-square test over every ordered slate of 2 out of 5 candidates (one impossible slate set with a head)."""
    temperature, draws = 0.25, 40_000
    samples = sample_slates(SCORES, 2, temperature, head, epsilon, np.random.default_rng(0), draws)
    counts = {}
    for slate in map(tuple, samples):
        counts[slate] = counts.get(slate, 0) + 1
    slates = list(itertools.permutations(range(5), 2))
    probs = np.array([np.prod(pick_probabilities(SCORES, np.array(s), temperature, head, epsilon)) for s in slates])
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
                                          ("head", -1), ("adaptive_half_life", 0.0)])
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
