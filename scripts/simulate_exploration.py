"""Simulate exploration settings on MovieLens-100K users; check off-policy estimates against the simulator.

    python scripts/split_by_time.py --interactions ~/.cache/recsys_tt/ml-100k/interactions.csv --out data/ml100k_half
    python train.py fit --config configs/ml100k_minilm.yaml --data.dataset files \
        --data.interactions data/ml100k_half/past.csv --data.items ~/.cache/recsys_tt/ml-100k/items.csv \
        --data.users ~/.cache/recsys_tt/ml-100k/users.csv --trainer.logger.init_args.name ml100k_half
    python scripts/export_index.py --checkpoint runs/ml100k_half/version_0/checkpoints/last.ckpt --out exports/half
    python scripts/simulate_exploration.py --export exports/half --future data/ml100k_half/future.csv

Users start with what the model knows of them and click (position-biased) items from their real later
interactions, which the model never saw; see recsys_tt/simulator.py. Every policy serves every user
``rounds`` slates through the real serving path. Writes results.json, exploration.png and each policy's
propensity log under --out, and prints two tables: the trade-off (clicks, coverage, novelty, diversity) and an
OPE check (the first round logged by an exploring policy, replicated, then IPS/SNIPS/DR of every policy against
its true value under the click model).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

from recsys_tt.cli import run
from recsys_tt.export.folder import ExportFolder
from recsys_tt.offline.policies import OPE_LOGGING_POLICY, SIMULATED_POLICIES, describe, slug
from recsys_tt.offline.simulator import CHECKED, SimulatedUsers, check_ope, run_policy
from recsys_tt.plots import plot_exploration
from recsys_tt.serving.requests import ServingConfig


def main(export: str = "exports/ml100k", future: str | None = None, rounds: int = 10, k: int = 10,
         users: int | None = None, start_fraction: float = 0.5, ope_replications: int = 3,
         propensity_samples: int = 300, seed: int = 0, out: str = "runs/exploration") -> None:
    """Run every policy for ``rounds`` rounds and check OPE against the simulator.

    Args:
        export: export folder of a trained model.
        future: user_id, item_id table of interactions the export was not trained on (scripts/split_by_time.py);
            users like these. Without it, users start with part of their known history and like the rest.
        rounds: slates served to each user per policy.
        k: slate size.
        users: simulate this many sampled users (default: all with a start and a liked item).
        start_fraction: share of each user's real history they start with; they like the rest.
        ope_replications: times the first round is logged for the OPE check (0 skips it).
        propensity_samples: draws per slate for per-position propensities (served and target policies).
        seed: seeds users, slates and clicks.
        out: output folder.
    """
    logging.basicConfig(level=logging.WARNING)
    root = Path(out)
    shutil.rmtree(root / "logs", ignore_errors=True)  # logs of an earlier run would mix with this run's
    root.mkdir(parents=True, exist_ok=True)
    folder = ExportFolder.load(export)
    start = SimulatedUsers.from_export(folder, start_fraction, users, seed, future)
    print(f"{len(start)} users, {rounds} rounds, slates of {k}", flush=True)
    results = {}
    for policy in SIMULATED_POLICIES:
        name, began = describe(policy), time.perf_counter()
        serving = ServingConfig(exploration=replace(policy, propensity_samples=propensity_samples))
        log_dir = root / "logs" / slug(name)
        results[name] = run_policy(folder, start, serving, rounds, k, seed, str(log_dir))
        print(f"{name}: {results[name]['cumulative_clicks']:.3f} clicks per user "
              f"({time.perf_counter() - began:.0f}s)", flush=True)
    plot = plot_exploration(results, root / "exploration.png")
    print(f"\n{'policy':<24} {'clicks/user':>11} {'round 1':>8} {'coverage':>9} {'novelty':>8} {'diversity':>9}")
    for name, r in results.items():
        print(f"{name:<24} {r['cumulative_clicks']:>11.3f} {r['clicks_per_round'][0]:>8.3f} {r['coverage']:>9.3f} "
              f"{r['novelty']:>8.2f} {r['diversity']:>9.3f}")
    ope = check_ope(folder, start, k, ope_replications, propensity_samples, root) if ope_replications else []
    if ope:
        print(f"\nOPE from the first round logged by {describe(OPE_LOGGING_POLICY)} ({ope[0]['slates']} slates); "
              "expected clicks per slate")
        print(f"{'policy':<24} {'true':>7} {'IPS':>22} {'SNIPS':>22} {'DR':>22} {'ESS min':>8}")
        for row in ope:
            cells = [f"{row[e]['value']:.4f} [{row[e]['low']:.3f},{row[e]['high']:.3f}]" for e in CHECKED]
            print(f"{row['policy']:<24} {row['true']:>7.4f} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22} "
                  f"{row['ess_min']:>8.0f}")
    (root / "results.json").write_text(json.dumps({"policies": {describe(p): asdict(p) for p in SIMULATED_POLICIES},
                                                   "simulation": results, "ope": ope}, indent=2))
    print(f"\nplot: {plot}; numbers: {root / 'results.json'}")


if __name__ == "__main__":
    run(main)
