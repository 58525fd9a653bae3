"""Serve -> log -> retrain -> serve: does exploration pay off once the next model learns from its logs?

    # the half-history model of README section 4 (runs/ml100k_half, data/ml100k_half)
    python scripts/simulate_retraining.py --checkpoint runs/ml100k_half --future data/ml100k_half/future.csv

Simulated users (recsys_tt/simulator.py) start with what the model knows of them and click, position-biased,
items from their real later interactions; each user's last later item is held out and never offered as a
click. Each loop (recsys_tt/policies.py: RETRAINING_LOOPS) serves every user a slate per round through the real
serving path into its own propensity log, then fine-tunes the previous round's model on every click logged so far
with ``train.py fit --model.init_checkpoint ... --data.logs ...`` (off-policy correction as the loop says), exports
it, and serves the next round with it. Writes results.json (with each fine-tuning's effective sample share of its
click weights), retraining.png, each loop's logs, runs and exports under --out, and prints clicks, coverage,
novelty and held-out NDCG@10 per loop.
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
from recsys_tt.offline.policies import RETRAINING_LOOPS, slug
from recsys_tt.offline.retraining import Retrainer
from recsys_tt.offline.simulator import SimulatedUsers, run_policy
from recsys_tt.plots import plot_retraining
from recsys_tt.serving.requests import ServingConfig
from recsys_tt.training.checkpoint_files import resolve_checkpoint, run_folder
from recsys_tt.training.export import export_model


def print_table(results: dict[str, dict]) -> None:
    print(f"\n{'loop':<40} {'clicks/user':>11} {'coverage':>9} {'novelty':>8} {'NDCG@10 first':>13} "
          f"{'NDCG@10 last':>12}")
    for name, r in results.items():
        print(f"{name:<40} {r['cumulative_clicks']:>11.3f} {r['coverage']:>9.3f} {r['novelty']:>8.2f} "
              f"{r['held_out_per_round'][0]['ndcg@10']:>13.4f} {r['held_out_final']['ndcg@10']:>12.4f}")


def main(checkpoint: str, future: str, rounds: int = 5, k: int = 10, steps: int = 60, logs_share: float = 0.5,
         users: int | None = None, seed: int = 0, out: str = "runs/retraining",
         train_args: list[str] | None = None, loops: list[str] | None = None) -> None:
    """Run every retraining loop for ``rounds`` rounds from the same model and users.

    Args:
        checkpoint: the starting model: a train.py checkpoint or run folder (its config.yaml is reused).
        future: user_id, item_id table of interactions the model was not trained on (scripts/split_by_time.py).
        rounds: serve-log-retrain rounds per loop.
        k: slate size.
        steps: fine-tuning steps per round (each round starts from the previous round's model).
        logs_share: share of fine-tuning steps on logged clicks; the rest replay the original interactions.
        users: simulate this many sampled users (default: all with a start, a liked and a held-out item).
        seed: seeds users, slates and clicks.
        out: output folder (its logs, runs and exports are replaced).
        train_args: further train.py overrides for every fine-tuning, e.g. '["--model.loss.log_weight_cap", "3"]'.
        loops: run only the loops of these names (default: every loop of RETRAINING_LOOPS).
    """
    chosen = [loop for loop in RETRAINING_LOOPS if loops is None or loop.name in loops]
    if loops is not None and len(chosen) != len(loops):
        raise ValueError(f"loops must be names of {[loop.name for loop in RETRAINING_LOOPS]}, got {loops}.")
    logging.basicConfig(level=logging.WARNING)
    root = Path(out)
    for part in ("logs", "runs", "exports"):  # an earlier run's logs would mix with this run's
        shutil.rmtree(root / part, ignore_errors=True)
    base = resolve_checkpoint(checkpoint)
    config = run_folder(base) / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{config} is missing: pass a checkpoint of a train.py run (it saves config.yaml).")
    start_export = ExportFolder.load(export_model(base, root / "exports" / "start", report_users=100))
    start = SimulatedUsers.from_export(start_export, users=users, seed=seed, future=future, hold_out_last=True)
    print(f"{len(start)} users, {rounds} rounds, slates of {k}, {steps} fine-tuning steps per round", flush=True)
    results = {}
    for loop in chosen:
        began, log_dir = time.perf_counter(), root / "logs" / slug(loop.name)
        serving = ServingConfig(exploration=replace(loop.serving, propensity_samples=0))  # picks are logged exactly
        retrain = Retrainer(loop, start_export, base, config, log_dir, root, steps, logs_share, train_args or [])
        results[loop.name] = run_policy(start_export, start, serving, rounds, k, seed, str(log_dir), retrain)
        results[loop.name]["click_weight_ess_per_round"] = retrain.weight_ess
        print(f"{loop.name}: {results[loop.name]['cumulative_clicks']:.3f} clicks per user "
              f"({time.perf_counter() - began:.0f}s)", flush=True)
    print_table(results)
    plot = plot_retraining(results, root / "retraining.png")
    (root / "results.json").write_text(json.dumps(
        {"loops": {loop.name: {"serving": asdict(loop.serving), "correction": loop.correction}
                   for loop in chosen},
         "settings": {"rounds": rounds, "k": k, "steps": steps, "logs_share": logs_share, "users": len(start)},
         "simulation": results}, indent=2))
    print(f"\nplot: {plot}; numbers: {root / 'results.json'}")


if __name__ == "__main__":
    run(main)
