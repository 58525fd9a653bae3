"""Named exploration settings: what the simulator compares, what OPE evaluates by default, and the retraining loops.

Names come from the settings themselves (``describe``), so a table row, a log folder and a JSON key always say
what was run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

from recsys_tt.serving.explore import ExplorationConfig

GREEDY = ExplorationConfig(temperature=0.0)

SIMULATED_POLICIES = (
    GREEDY,
    ExplorationConfig(temperature=0.01),
    ExplorationConfig(temperature=0.02),
    ExplorationConfig(temperature=0.05),
    ExplorationConfig(temperature=0.05, head=3),
    ExplorationConfig(temperature=0.01, adaptive_boost=3.0, adaptive_half_life=20.0),
)
"""The exploration settings scripts/simulate_exploration.py compares."""

OPE_LOGGING_POLICY = ExplorationConfig(temperature=0.03, epsilon=0.05)
"""The policy whose log the simulator's off-policy check estimates every other policy from."""

OPE_TARGETS = tuple(ExplorationConfig(temperature=t) for t in (0.0, 0.02, 0.05, 0.1))
"""What scripts/ope.py evaluates when no targets are given."""


def describe(config: ExplorationConfig) -> str:
    """A short name of the settings that differ from a plain softmax."""
    parts = ["greedy" if config.temperature == 0 else f"tau {config.temperature:g}"]
    parts += [f"head {config.head}"] if config.head else []
    parts += [f"eps {config.epsilon:g}"] if config.epsilon else []
    parts += [f"adaptive x{config.adaptive_boost:g}"] if config.adaptive_boost else []
    parts += [f"bonus {config.bonus:g}"] if config.bonus else []
    return ", ".join(parts)


def slug(name: str) -> str:
    """A folder name for a policy or loop name."""
    return re.sub(r"[^a-z0-9.]+", "_", name.lower()).strip("_")


@dataclass(frozen=True)
class RetrainingLoop:
    """Serve with ``serving``, then fine-tune on the logged clicks with ``correction`` (model.loss.log_correction),
    towards the same serving policy as the target."""

    serving: ExplorationConfig
    correction: Literal["topk", "ips", "none"]

    def __post_init__(self) -> None:
        if self.correction != "none" and self.serving.temperature == 0:
            raise ValueError("A corrected loop needs a serving temperature > 0: its target policy is the model's "
                             "softmax at that temperature.")

    def train_args(self) -> list[str]:
        """The train.py overrides of this loop's fine-tuning objective."""
        objective = ["--model.loss.log_correction", self.correction]
        if self.correction == "none":
            return objective
        return [*objective, "--model.loss.log_target_temperature", str(self.serving.temperature)]

    @property
    def name(self) -> str:
        retraining = "uncorrected" if self.correction == "none" else f"{self.correction}-corrected"
        return f"{describe(self.serving)} + {retraining} retraining"


EXPLORING = ExplorationConfig(temperature=0.02)  # the simulator's best 5-to-10-round trade-off without retraining
RETRAINING_LOOPS = (RetrainingLoop(GREEDY, "none"), RetrainingLoop(EXPLORING, "none"),
                    RetrainingLoop(EXPLORING, "topk"))
"""The loops scripts/simulate_retraining.py compares: greedy and exploring serving, with and without correction."""


@dataclass(frozen=True)
class ArrivalPolicy:
    """A serving policy of the arrivals simulator and how its rounds fine-tune."""

    name: str
    exploration: ExplorationConfig
    log_impressions: float  # the refresh's weight of skipped items (0: clicks only)
    text_prior: bool = True  # False: released items get one placeholder text, so a new item's prior says nothing


_EXPLORING_HEAD = ExplorationConfig(temperature=0.02, head=3)
DIRECTED = replace(_EXPLORING_HEAD, bonus=0.3)
"""Chosen on a separate seed (99, 4 rounds of 500 users) from bonus 0.2-0.5 with pseudo-count 1 and bonus 0.2 with
pseudo-count 10 (docs/arrivals_log.md); configs/serve_directed.yaml serves it."""


def arrival_policies(directed: ExplorationConfig = DIRECTED) -> tuple[ArrivalPolicy, ...]:
    """What scripts/simulate_arrivals.py compares: the first is the baseline, the last isolates the text prior;
    ``directed`` is the exploration of the directed policies. Directed serving is refreshed from clicks only and
    from impressions too (skipped items as negatives, weight 1); the text-prior ablation uses clicks only, chosen on
    a separate seed before refreshes counted their evidence once (docs/arrivals_log.md)."""
    return (ArrivalPolicy("greedy + retraining", GREEDY, log_impressions=0.0),
            ArrivalPolicy("temperature + retraining", _EXPLORING_HEAD, log_impressions=0.0),
            ArrivalPolicy("directed + retraining", directed, log_impressions=0.0),
            ArrivalPolicy("directed + impression-aware retraining", directed, log_impressions=1.0),
            ArrivalPolicy("directed + retraining, no text prior", directed, log_impressions=0.0, text_prior=False))

