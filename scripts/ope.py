"""Off-policy evaluation of exploration settings from a serving log (IPS, SNIPS, DM, DR with bootstrap intervals).

    python scripts/ope.py --log_dir logs/ml100k
    python scripts/ope.py --log_dir logs/ml100k --targets '[{"temperature": 0}, {"temperature": 0.1, "head": 3}]'

Each target is an exploration setting applied to the logged candidates and scores (candidates and reranking are
the logging server's). Prints a table and, with --json, writes the numbers.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from recsys_tt.cli import run
from recsys_tt.offline.ope import ESTIMATORS, LoggedSlates, evaluate_target
from recsys_tt.offline.policies import OPE_TARGETS, describe
from recsys_tt.serving.explore import ExplorationConfig


def print_table(rows: list[dict]) -> None:
    print(f"{'target':<26} {'estimator':<6} {'value':>8} {'95% interval':>20} {'ESS min':>8}")
    for row in rows:
        for name in ESTIMATORS:
            e = row[name]
            interval = f"[{e['low']:.4f}, {e['high']:.4f}]"
            print(f"{row['target']:<26} {name:<6} {e['value']:>8.4f} {interval:>20} {row['ess_min']:>8.0f}")


def main(log_dir: str, targets: list[ExplorationConfig] | None = None, samples: int = 500,
         reestimate_logging: bool = True, bootstrap: int = 500, seed: int = 0, json_out: str | None = None) -> None:
    """Estimate the expected clicks per slate of target exploration settings from logged slates and rewards.

    Args:
        log_dir: the propensity log folder of serve.py (impressions-*.jsonl, feedback-*.jsonl).
        targets: exploration settings to evaluate (default: greedy and temperatures 0.02, 0.05, 0.1).
        samples: slates drawn per logged request to estimate a target's per-position probabilities.
        reestimate_logging: re-estimate 1 / logging propensity without bias from the logged settings (slower);
            false uses the inverse of the server's logged estimates, which overweights rarely shown items.
        bootstrap: bootstrap resamples for the intervals.
        seed: seeds the draws and the bootstrap.
        json_out: also write the results to this JSON file.
    """
    logged = LoggedSlates.from_log(log_dir)
    on_policy = float(logged.rewards.sum(1).mean())
    print(f"{len(logged.picks)} slates of {logged.picks.shape[1]}; logging policy's mean reward per slate "
          f"{on_policy:.4f}")
    inverse = logged.inverse_propensities(np.random.default_rng(seed)) if reestimate_logging else None
    rows = [{"target": describe(t), "settings": asdict(t),
             **evaluate_target(logged, t, samples, bootstrap, seed, inverse)} for t in targets or OPE_TARGETS]
    print_table(rows)
    if json_out:
        Path(json_out).write_text(json.dumps({"logging_reward_per_slate": on_policy, "targets": rows}, indent=2))


if __name__ == "__main__":
    run(main)
