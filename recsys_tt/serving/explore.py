"""Softmax-temperature exploration, optionally directed by each candidate's uncertainty: Plackett-Luce slates by
Gumbel top-k, with exact and per-position propensities.

Candidates arrive best first with scores s and (optionally) uncertainties u (``serving.uncertainty``). The sampler
ranks by the policy score p = s + bonus * u, an upper confidence bound: items the model knows little of move up.
A slate of k positions is drawn like this:
- the first ``head`` positions are the best ``head`` candidates by s (deterministic);
- every further position, with probability ``epsilon``, takes a uniformly random remaining candidate, else the
  remaining candidate with the largest p / temperature + Gumbel noise (one noise draw per candidate and slate).
With epsilon = 0 that is Gumbel top-k, i.e. Plackett-Luce sampling from softmax(p / temperature). The Gumbel
race is memoryless, so after any earlier picks (random or not) the next argmax is again the softmax over what
remains; each pick's probability is therefore (1 - epsilon) * softmax_remaining + epsilon / |remaining|, and the
slate's (cascade) probability is their product. Temperature 0 is greedy on p (ties go to the better-ranked
candidate). Every propensity stays exact with a bonus, since the bonus only changes the scores sampled from.
The probability that an item lands at a given position sums over all earlier picks, so it is estimated by
drawing ``propensity_samples`` slates from the same policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_FLOAT32_FLOOR = -1e38  # logits below it (probability exp(-1e38) = 0) are clipped so float32 keys stay finite
MIN_TEMPERATURE = 1e-8
"""Smallest positive temperature: below it a slate is greedy in effect and scores / temperature leaves float range."""
MAX_TEMPERATURE = 1e6
"""Largest temperature: cosine scores over it differ by under 2e-6, so a slate is uniform in effect; an adaptive
boost is capped here too, so no product of settings reaches infinity."""
MAX_BONUS = 100.0
"""Largest bonus: cosine scores span [-1, 1], so beyond it the ranking below the head is by uncertainty alone."""


def temperature_problem(temperature: float) -> str | None:
    """Why ``temperature`` cannot be used, or None: it is 0 (greedy) or in [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
    if temperature == 0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:
        return None
    return (f"temperature must be 0 (greedy) or a number from {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}, "
            f"got {temperature}")


@dataclass(frozen=True)
class ExplorationConfig:
    """How much a served slate explores."""

    temperature: float = 0.05
    """Divides the scores (cosine similarities) before the softmax; 0 = greedy, larger = more exploration."""
    head: int = 0
    """The first ``head`` positions always show the best-scored candidates; exploration fills the rest."""
    epsilon: float = 0.0
    """Each sampled position is uniform over the remaining candidates with this probability (a floor)."""
    adaptive_boost: float = 0.0
    """Temperature x (1 + boost x half_life / (half_life + history length)): new users explore more."""
    adaptive_half_life: float = 10.0
    """History length at which the boost is halved."""
    propensity_samples: int = 1000
    """Slates drawn to estimate each shown item's per-position propensity (0: not estimated)."""
    bonus: float = 0.0
    """Directed exploration: below the head, each candidate's score is raised by bonus x its uncertainty (1 for an
    item never observed, shrinking with its interactions and impressions), in cosine units; 0 = undirected."""
    bonus_candidates: int = 50
    """With a bonus: this many candidates more, the best by score + bonus x uncertainty over the whole catalog (an
    exact pass, one matrix-vector product a request), so that items the index ranks low by score alone, such as new
    ones, can be explored at all."""
    bonus_pseudo_count: float = 1.0
    """Observations of an item that halve its score variance (the noise-to-prior variance ratio). At 1 an item with
    the 5 interactions of a 5-core data set is 0.41 uncertain against 1 for a new one, so a bonus favours new items
    over the long tail; at 10 the two were 0.82 and 1, and on Amazon Video Games the bonus went to old items."""
    impression_weight: float = 0.1
    """An impression counts as this many observations (a click or training interaction counts as 1)."""

    def __post_init__(self) -> None:
        checks = {"temperature": temperature_problem(self.temperature) is None,
                  "head": self.head >= 0, "epsilon": 0 <= self.epsilon <= 1,
                  "adaptive_boost": self.adaptive_boost >= 0 and math.isfinite(self.adaptive_boost),
                  "adaptive_half_life": self.adaptive_half_life > 0, "propensity_samples": self.propensity_samples >= 0,
                  "bonus": 0 <= self.bonus <= MAX_BONUS, "bonus_pseudo_count": self.bonus_pseudo_count > 0,
                  "bonus_candidates": self.bonus_candidates >= 0,
                  "impression_weight": 0 <= self.impression_weight <= 1}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"Exploration settings out of range: {', '.join(f'{b}={getattr(self, b)}' for b in bad)} "
                             f"(temperature 0 or {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}, head >= 0, "
                             "0 <= epsilon <= 1, adaptive_boost >= 0, adaptive_half_life > 0, "
                             f"propensity_samples >= 0, 0 <= bonus <= {MAX_BONUS:g}, bonus_candidates >= 0, "
                             "bonus_pseudo_count > 0, 0 <= impression_weight <= 1).")

    def user_temperature(self, history_length: int, temperature: float | None = None) -> float:
        """The temperature for a user with ``history_length`` known items (``temperature`` overrides the base)."""
        base = self.temperature if temperature is None else temperature
        half = self.adaptive_half_life
        return min(base * (1.0 + self.adaptive_boost * half / (half + history_length)), MAX_TEMPERATURE)


@dataclass
class Slate:
    """A served slate: candidate positions in display order and how likely the policy was to show them."""

    picks: np.ndarray  # (k,) indices into the candidate list, display order
    pick_probability: np.ndarray  # (k,) P(this pick | the picks above it), exact
    position_propensity: np.ndarray | None  # (k,) P(this item at this position), estimated; None if not asked
    probability: float  # P(this exact ordered slate) = product of pick_probability
    temperature: float


def sample_slates(scores: np.ndarray, k: int, temperature: float, head: int, epsilon: float,
                  rng: np.random.Generator, n: int = 1) -> np.ndarray:
    """(n, k) slates (candidate indices) drawn from the policy; ``scores`` are best first and k <= len(scores)."""
    count, head = len(scores), min(head, k)
    slates = np.empty((n, k), dtype=np.int64)
    slates[:, :head] = np.arange(head)
    ranked = _ranked_by_key(scores[head:], k - head, temperature, rng, n) + head  # (n, k - head)
    if epsilon == 0:
        slates[:, head:] = ranked
        return slates
    # Each position: with probability epsilon a uniformly random remaining candidate, else the remaining one with
    # the best key. At most k - head - 1 items are gone before the last position, so the best remaining key is
    # always among the k - head best. Uniform picks take the best of fixed uniform keys among what remains,
    # which is uniform again because removals never depend on those keys.
    rows = np.arange(n)
    available = np.ones((n, count), dtype=bool)
    available[:, :head] = False
    uniform_keys = rng.random((n, count), dtype=np.float32)
    for position in range(head, k):
        pick = ranked[rows, available[rows[:, None], ranked].argmax(axis=1)]
        explore_rows = np.flatnonzero(rng.random(n) < epsilon)
        if len(explore_rows):
            keys = np.where(available[explore_rows], uniform_keys[explore_rows], -1.0)
            pick[explore_rows] = keys.argmax(axis=1)
        slates[:, position] = pick
        available[rows, pick] = False
    return slates


def _ranked_by_key(scores: np.ndarray, top: int, temperature: float, rng: np.random.Generator,
                   n: int) -> np.ndarray:
    """(n, top) indices of the largest scores / temperature + Gumbel noise, best first (greedy at temperature 0)."""
    if temperature == 0 or top == 0:  # a stable sort keeps ties in candidate order
        return np.broadcast_to(np.argsort(-scores, kind="stable")[:top], (n, top))
    # float32 keys halve the cost of the thousands of propensity draws; U stays inside (0, 1), so no log(0).
    # Logits relative to the best score, floored inside float32 range, cannot overflow at a tiny temperature.
    uniform = rng.random((n, len(scores)), dtype=np.float32) * np.float32(1 - 2**-23) + np.float32(2**-24)
    logits = np.maximum((scores - scores.max()) / temperature, _FLOAT32_FLOOR).astype(np.float32)
    keys = logits - np.log(-np.log(uniform))
    best = np.argpartition(-keys, top - 1, axis=1)[:, :top]
    order = np.argsort(-np.take_along_axis(keys, best, 1), axis=1, kind="stable")
    return np.take_along_axis(best, order, 1)


def pick_probabilities(scores: np.ndarray, slate: np.ndarray, temperature: float, head: int,
                       epsilon: float) -> np.ndarray:
    """(k,) exact probability of each pick of ``slate`` given the picks above it."""
    available = np.ones(len(scores), dtype=bool)
    out = np.ones(len(slate))
    for position, pick in enumerate(slate):
        if position < head:
            out[position] = float(pick == position)  # the head shows the best candidates in order
        else:
            remaining = np.flatnonzero(available)
            if temperature > 0:
                logits = scores[remaining] / temperature
                weights = np.exp(logits - logits.max())
                best = weights[remaining == pick][0] / weights.sum()
            else:
                best = float(pick == remaining[np.argmax(scores[remaining])])  # the first of tied maxima
            out[position] = (1 - epsilon) * best + epsilon / len(remaining)
        available[pick] = False
    return out


def policy_scores(scores: np.ndarray, uncertainty: np.ndarray | None, bonus: float) -> np.ndarray:
    """The scores slates are sampled from: the model's plus ``bonus`` x each candidate's uncertainty."""
    scores = np.asarray(scores, dtype=np.float64)
    return scores if uncertainty is None or bonus == 0 else scores + bonus * np.asarray(uncertainty, dtype=np.float64)


def is_deterministic(config: ExplorationConfig, temperature: float, k: int) -> bool:
    """Whether the policy always shows the same slate (greedy with no floor, or a head covering the slate)."""
    return (temperature == 0 and config.epsilon == 0) or config.head >= k


def position_marginals(scores: np.ndarray, k: int, config: ExplorationConfig, temperature: float,
                       rng: np.random.Generator, samples: int) -> np.ndarray:
    """(k, C) probability of each candidate at each position, estimated from ``samples`` draws (exact if the
    policy is deterministic)."""
    draws = 1 if is_deterministic(config, temperature, k) else samples
    slates = sample_slates(scores, k, temperature, config.head, config.epsilon, rng, draws)
    out = np.zeros((k, len(scores)))
    for position in range(k):
        out[position] = np.bincount(slates[:, position], minlength=len(scores)) / draws
    return out


def explore(scores: np.ndarray, k: int, config: ExplorationConfig, temperature: float,
            rng: np.random.Generator, uncertainty: np.ndarray | None = None) -> Slate:
    """Draws one slate of ``min(k, candidates)`` from best-first ``scores`` (and the candidates' ``uncertainty``,
    which ``config.bonus`` directs exploration by) and computes its propensities."""
    scores = policy_scores(scores, uncertainty, config.bonus)
    k = min(k, len(scores))
    slate = sample_slates(scores, k, temperature, config.head, config.epsilon, rng)[0]
    picks = pick_probabilities(scores, slate, temperature, config.head, config.epsilon)
    position, deterministic = None, is_deterministic(config, temperature, k)
    if config.propensity_samples or deterministic:
        draws = 1 if deterministic else config.propensity_samples
        marginals = position_marginals(scores, k, config, temperature, rng, draws)
        # The served slate is one more draw of the policy: counting it keeps estimates above zero.
        position = (marginals[np.arange(k), slate] * draws + 1) / (draws + 1)
    return Slate(slate, picks, position, float(np.prod(picks)), temperature)
