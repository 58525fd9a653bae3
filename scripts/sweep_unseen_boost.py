"""Choose ``model.tower.unseen_item_boost`` for a model trained with ``--data.cold_items``: validation and test NDCG@10
overall, of the users whose target is a cold item and of those whose target is warm, at several boosts.

    python train.py fit --config configs/beauty_minilm.yaml --data.cold_items 0.2
    python scripts/sweep_unseen_boost.py --run runs/beauty_minilm/version_1 --boosts '[0, 0.1, 0.2, 0.3]'

The boost scales the vectors of items without a trained id vector: the higher it is, the more close calls cold items
win against trained ones, and the more warm users lose. Choose it on validation; the test columns are for reporting.
Prints a table and writes unseen_boost.json and unseen_boost.png in the run folder.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Literal

from recsys_tt.cli import run
from recsys_tt.plots import plot_unseen_boost
from recsys_tt.training.checkpoint_files import resolve_checkpoint, run_data_settings
from recsys_tt.training.lightning_cli import main as train_cli

STAGES = {"validate": "val", "test": "test"}


def main(run: str, boosts: list[float] | None = None, checkpoint: str | None = None,
         unseen_items: Literal["text", "predicted_ids"] | None = None) -> dict:
    """Evaluates the run's checkpoint at every boost.

    Args:
        run: a run folder of ``train.py fit`` with ``--data.cold_items`` (its config.yaml is read).
        boosts: the boosts to try (default 0, 0.1, 0.2, 0.3).
        checkpoint: the checkpoint to evaluate (default: the run's best-validation one; a run without validation:
            pass its checkpoints/last.ckpt).
        unseen_items: place cold items this way instead of as the run's config says.
    """
    folder = Path(run)
    config = folder / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{config} does not exist; --run takes a folder written by train.py fit.")
    if not run_data_settings(folder).get("cold_items"):
        raise ValueError(f"{run} was trained without data.cold_items, so no item is cold; train with "
                         "--data.cold_items 0.2 and sweep that run.")
    path = str(resolve_checkpoint(checkpoint or run))
    results = {}
    for boost in boosts if boosts is not None else [0.0, 0.1, 0.2, 0.3]:
        if boost < 0:
            raise ValueError(f"Boosts must be >= 0, got {boost}.")
        results[str(boost)] = {prefix: _evaluate(stage, config, path, boost, unseen_items)
                               for stage, prefix in STAGES.items()}
        print(f"boost {boost}: " + json.dumps(results[str(boost)]), flush=True)
    (folder / "unseen_boost.json").write_text(json.dumps({"checkpoint": path, "results": results}, indent=2))
    print(table(results))
    plot_unseen_boost(results, folder / "unseen_boost.png")
    return results


def _evaluate(stage: str, config: Path, checkpoint: str, boost: float, unseen_items: str | None) -> dict[str, float]:
    placement = ["--model.tower.unseen_items", unseen_items] if unseen_items else []
    with warnings.catch_warnings():  # Lightning's advice for training runs: evaluation runs no callbacks, and the
        # arguments are this script's own, not a second command line
        for message in (".*callbacks used to create the checkpoint", ".*The dirpath has changed", ".*args parameter"):
            warnings.filterwarnings("ignore", message=message)
        cli = train_cli([stage, "--config", str(config), "--ckpt_path", checkpoint, "--trainer.logger", "false",
                         "--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "false",
                         "--trainer.limit_val_batches", "1.0", "--model.tower.unseen_item_boost", str(boost),
                         *placement])
    metrics = cli.trainer.callback_metrics
    prefix = STAGES[stage]
    return {kind: float(metrics[f"{prefix}{suffix}/ndcg@10"])
            for kind, suffix in (("all", ""), ("cold", "_cold"), ("warm", "_warm"))}


def table(results: dict[str, dict]) -> str:
    """One line per boost: NDCG@10 overall, cold and warm and the cold / warm ratio, on validation and on test."""
    lines = [f"{'boost':>6} | {'val all':>8} {'cold':>7} {'warm':>7} {'ratio':>6} | {'test all':>8} {'cold':>7} "
             f"{'warm':>7} {'ratio':>6}"]
    for boost, result in results.items():
        cells = [f"{r['all']:>8.4f} {r['cold']:>7.4f} {r['warm']:>7.4f} {r['cold'] / r['warm']:>6.2f}"
                 for r in (result["val"], result["test"])]
        lines.append(f"{float(boost):>6.2f} | {cells[0]} | {cells[1]}")
    return "\n".join(lines)


if __name__ == "__main__":
    run(main)
