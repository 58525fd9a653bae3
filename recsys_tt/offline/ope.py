"""Off-policy evaluation of exploration settings from the propensity log.

Position-based model: the reward at a position depends on the item shown there and the position only, so each
position is a contextual bandit whose action is the item. The value of a policy is the expected total reward of
a slate. For a target exploration setting, applied to the same logged candidates and scores:

- IPS:   mean over slates of  sum_j w_j r_j,  with  w_j = pi_target(item_j at j) / pi_logging(item_j at j);
- SNIPS: per position, sum_i w_ij r_ij / sum_i w_ij, summed over positions;
- DM:    sum_j sum_c pi_target(c at j) q(c, j), with q a logistic model of reward from the two-tower score and
         the position, fitted on the log;
- DR:    DM + sum_j w_j (r_j - q(item_j, j)).

Target per-position probabilities are estimated by drawing slates from the target policy (an unbiased estimate,
and IPS is linear in it); inverse logging probabilities are either the inverse of the logged estimates or
re-estimated without bias by ``LoggedSlates.inverse_propensities``. Intervals are percentile
bootstraps over slates; the effective sample size per position is (sum w)^2 / sum w^2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from recsys_tt.data.propensity_log import LogFolder
from recsys_tt.serving.explore import ExplorationConfig, position_marginals, sample_slates

ESTIMATORS = ("IPS", "SNIPS", "DM", "DR")


@dataclass
class LoggedSlates:
    """Slates of one size k from a log: candidates' scores, the shown picks, their propensities and rewards."""

    scores: list[np.ndarray]  # per slate: (C,) candidate scores, best first
    picks: np.ndarray  # (n, k) shown candidates, indices into each slate's candidates
    propensities: np.ndarray  # (n, k) logging policy's P(item at position)
    rewards: np.ndarray  # (n, k)
    history_length: np.ndarray  # (n,) for adaptive temperatures
    logging_policy: list[ExplorationConfig]  # per slate: the settings that served it (its actual temperature)

    @classmethod
    def from_log(cls, folder: str | Path) -> LoggedSlates:
        contents = LogFolder.read(folder)
        log = contents.impressions
        sizes = log["k"].unique()
        if len(sizes) != 1:
            raise ValueError(f"{folder} mixes slate sizes {sorted(sizes)}; evaluate one size at a time.")
        if log["position_propensities"].isna().any():
            raise ValueError(f"{folder} has slates logged without per-position propensities "
                             "(propensity_samples=0); they cannot be evaluated off-policy.")
        reward = slate_positions(contents)["reward"].to_numpy().reshape(len(log), int(sizes[0]))
        picks = [[list(c).index(row) for row in s] for c, s in zip(log["candidate_rows"], log["slate_rows"])]
        policies = [ExplorationConfig(temperature=t, head=h, epsilon=e)
                    for t, h, e in log[["temperature", "head", "epsilon"]].itertuples(index=False)]
        return cls([np.asarray(s, dtype=np.float64) for s in log["candidate_scores"]], np.asarray(picks),
                   np.asarray(log["position_propensities"].tolist()), reward,
                   log["history_length"].to_numpy(), policies)

    def inverse_propensities(self, rng: np.random.Generator, chunk: int = 1000,
                             max_draws: int = 100_000) -> np.ndarray:
        """(n, k) unbiased estimates of 1 / P_logging(item at its position), recomputed from the logged settings.

        Slates are drawn from each logged request's policy until every logged item has turned up at its
        position; the number of draws that takes is geometric with mean exactly 1 / p. The server's logged
        propensities come from a few hundred draws, and 1 / estimate is biased upwards (1/p is convex), most for
        rarely shown items; this estimate is not (up to ``max_draws``, where it is cut off).
        """
        n, k = self.picks.shape
        out = np.empty((n, k))
        for i, (scores, picks, policy) in enumerate(zip(self.scores, self.picks, self.logging_policy)):
            first, drawn = np.zeros(k), 0
            while not first.all() and drawn < max_draws:
                hits = sample_slates(scores, k, policy.temperature, policy.head, policy.epsilon, rng, chunk) == picks
                found = hits.any(axis=0) & (first == 0)
                first[found] = drawn + hits[:, found].argmax(axis=0) + 1
                drawn += chunk
            out[i] = np.where(first > 0, first, max_draws)
        return out


def fit_reward_model(logged: LoggedSlates, ridge: float = 1e-3, iterations: int = 25) -> np.ndarray:
    """Logistic reward model sigmoid(a_position + b * score) by Newton's method: returns (a_1..a_k, b)."""
    n, k = logged.picks.shape
    scores = np.stack([s[p] for s, p in zip(logged.scores, logged.picks)])  # (n, k) scores of the shown items
    features = np.concatenate([np.tile(np.eye(k), (n, 1)), scores.reshape(-1, 1)], axis=1)
    target = logged.rewards.reshape(-1).clip(0, 1)
    weights = np.zeros(k + 1)
    for _ in range(iterations):
        prob = 1 / (1 + np.exp(-features @ weights))
        gradient = features.T @ (prob - target) + ridge * weights
        hessian = (features * (prob * (1 - prob))[:, None]).T @ features + ridge * np.eye(k + 1)
        weights -= np.linalg.solve(hessian, gradient)
    return weights


def _reward(weights: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(k, C) modelled reward of every candidate at every position."""
    k = len(weights) - 1
    return 1 / (1 + np.exp(-(weights[:k, None] + weights[k] * scores[None, :])))


def evaluate_target(logged: LoggedSlates, target: ExplorationConfig, samples: int = 500, bootstrap: int = 500,
                    seed: int = 0, inverse_logging: np.ndarray | None = None) -> dict:
    """Estimates (value, 95% interval) of a target policy by every estimator, plus effective sample sizes.

    ``inverse_logging`` (n, k) estimates 1 / logging propensity, e.g. ``logged.inverse_propensities(...)``;
    by default the inverse of the logged propensities.
    """
    rng = np.random.default_rng(seed)
    inverse = 1.0 / logged.propensities if inverse_logging is None else inverse_logging
    n, k = logged.picks.shape
    weights = fit_reward_model(logged)
    target_prob, direct, modelled = np.empty((n, k)), np.empty(n), np.empty((n, k))
    slates = tqdm(enumerate(zip(logged.scores, logged.picks)), total=n, unit="slate", mininterval=1.0, leave=False,
                  desc=f"OPE (temperature {target.temperature:g})")
    for i, (scores, picks) in slates:
        temperature = target.user_temperature(int(logged.history_length[i]))
        marginals = position_marginals(scores, k, target, temperature, rng, samples)
        reward = _reward(weights, scores)
        target_prob[i] = marginals[np.arange(k), picks]
        direct[i] = (marginals * reward).sum()
        modelled[i] = reward[np.arange(k), picks]
    w = target_prob * inverse
    parts = {"IPS": (w * logged.rewards).sum(1), "DM": direct,
             "DR": direct + (w * (logged.rewards - modelled)).sum(1)}
    resamples = rng.integers(0, n, size=(bootstrap, n))
    out = {}
    for name in ESTIMATORS:
        if name == "SNIPS":
            value = _snips(w, logged.rewards)
            spread = np.array([_snips(w[r], logged.rewards[r]) for r in resamples])
        else:
            value, spread = parts[name].mean(), parts[name][resamples].mean(axis=1)
        low, high = np.percentile(spread, [2.5, 97.5])
        out[name] = {"value": float(value), "low": float(low), "high": float(high)}
    ess = w.sum(0) ** 2 / np.maximum((w**2).sum(0), 1e-300)
    out["ess_min"], out["ess_mean"], out["slates"] = float(ess.min()), float(ess.mean()), n
    return out


def _snips(w: np.ndarray, rewards: np.ndarray) -> float:
    return float(((w * rewards).sum(0) / np.maximum(w.sum(0), 1e-300)).sum())


def slate_positions(contents: LogFolder) -> pd.DataFrame:
    """One row per (slate, position) of a log folder, slate by slate in log order, with its reward (0 unless
    feedback said otherwise; ``LogFolder.feedback``)."""
    rows = contents.impressions[["request_id", "slate_rows", "slate", "pick_probabilities", "position_propensities",
                        "slate_probability"]].copy()
    rows["position"] = rows["slate"].map(lambda s: list(range(len(s))))
    rows["position_propensities"] = [p if isinstance(p, list) else [np.nan] * len(s)  # not estimated
                                     for p, s in zip(rows["position_propensities"], rows["slate"])]
    rows["pscore_cascade"] = rows["pick_probabilities"].map(lambda p: np.cumprod(p).tolist())
    rows = rows.explode(["slate_rows", "slate", "pick_probabilities", "position_propensities", "position",
                         "pscore_cascade"], ignore_index=True)
    rows = rows.rename(columns={"slate": "item_id", "slate_rows": "action"})
    feedback = contents.feedback
    rows = rows.merge(feedback[["request_id", "item_id", "reward"]], on=["request_id", "item_id"], how="left")
    rows["reward"] = rows["reward"].fillna(0.0).astype(float)
    return rows


def bandit_feedback(folder: str | Path, n_actions: int, kind: str = "slate") -> dict:
    """Open Bandit Pipeline's ``bandit_feedback`` of a log folder.

    kind="slate": one round per (slate, position), with slate_id, pscore (the slate's probability),
    pscore_cascade (probability of the slate down to that position) and pscore_item_position (the item's
    per-position propensity) for obp.ope.SlateOffPolicyEvaluation. kind="position": action, position, reward
    and pscore = the per-position propensity, for obp.ope.OffPolicyEvaluation with position-based estimators.
    """
    rows = slate_positions(LogFolder.read(folder))
    slate_id = pd.factorize(rows["request_id"])[0]
    common = {"n_rounds": len(rows), "action": rows["action"].to_numpy(np.int64),
              "position": rows["position"].to_numpy(np.int64), "reward": rows["reward"].to_numpy(float)}
    if kind == "position":
        if rows["position_propensities"].isna().any():
            raise ValueError("Some slates were logged without per-position propensities (propensity_samples=0).")
        return {**common, "n_actions": n_actions, "pscore": rows["position_propensities"].to_numpy(float)}
    if kind != "slate":
        raise ValueError(f"kind must be 'slate' or 'position', got {kind!r}.")
    return {**common, "n_unique_action": n_actions, "slate_id": slate_id,
            "len_list": int(rows.groupby("request_id").size().max()),
            "pscore": rows["slate_probability"].to_numpy(float),
            "pscore_cascade": rows["pscore_cascade"].to_numpy(float),
            "pscore_item_position": rows["position_propensities"].to_numpy(float)}
