"""What the language model adds: the shipped config against text-only, id-only, untrained-backbone and frozen-backbone
variants, each on the full leave-one-out protocol and with a share of the catalog held out as cold items.

    python scripts/bench_ablation.py                                  # ML-1M and Amazon Beauty, the schedule below
    python scripts/bench_ablation.py --datasets '{"Beauty": ["configs/beauty_minilm.yaml"]}' --steps 300

Rows (each run ``train.py fit`` in its own process for ``--steps`` steps without validation, then tests the final
weights; every row of a dataset uses the same schedule):
- shipped: the dataset's config as it is;
- text only: no item id vectors (``model.tower.item_id_embeddings false``);
- ids only: every item's text is the same word, so only the id vectors tell items apart;
- random backbone: the backbone's architecture with random weights (no language pretraining);
- frozen backbone: LoRA adapters not trained, a trained linear head on each tower instead.
Each row runs twice: on the standard split (test NDCG@10 / Recall@10) and with ``--cold_items`` of the catalog never
trained on (``data.cold_items``): NDCG@10 of the users whose test item is cold and of those whose test item is warm.
Prints one table, writes ``ablation.json`` and ``ablation.png`` under ``--out``.
"""

from __future__ import annotations

import json
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from recsys_tt.cli import run
from recsys_tt.plots import plot_ablation
from recsys_tt.training.step_timer import in_own_process, timed_fit

DATASETS = {
    "ML-1M": ["configs/ml1m_minilm.yaml"],
    "Amazon Beauty": ["configs/beauty_minilm.yaml"],
}
ROWS = {
    "shipped": [],
    "text only": ["--model.tower.item_id_embeddings", "false"],
    "ids only": ["--data.templates.item", "item"],
    "random backbone": ["--model.tower.backbone_init", "random"],
    "frozen backbone": ["--model.tower.train_adapters", "false", "--model.tower.projection_dim", "384"],
}
_METRICS = ("test_ndcg@10", "test_recall@10")


def main(datasets: dict[str, list[str]] | None = None, rows: list[str] | None = None, steps: int = 300,
         cold_items: float = 0.2, parallel: int = 1, out: str = "runs/ablation") -> None:
    """Runs every row on every dataset and prints the table.

    Args:
        datasets: name -> train.py arguments after `fit --config` (a config path, then overrides shared by its rows).
        rows: which of the rows above to run (default: all).
        steps: training steps of every run.
        cold_items: the share of the catalog held out in each row's second run.
        parallel: runs at once. A GPU that one small run leaves mostly idle trains several side by side; their
            times then include the sharing (the quality columns do not change).
        out: folder for ablation.json and ablation.png.
    """
    unknown = sorted(set(rows or ()) - set(ROWS))
    if unknown:
        raise ValueError(f"Unknown rows {unknown}; choose from {list(ROWS)}.")
    datasets = datasets or DATASETS
    held_out = {"full": [], "cold": ["--data.cold_items", str(cold_items)]}
    runs = {(d, r, split): [*datasets[d], *ROWS[r], *held_out[split]]
            for d in datasets for r in (rows or ROWS) for split in held_out}
    results: dict[str, dict] = {}
    Path(out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as root, ThreadPoolExecutor(parallel) as pool:
        futures = {pool.submit(_run, args, steps, f"{root}/{i}"): key for i, (key, args) in enumerate(runs.items())}
        for future in tqdm(as_completed(futures), total=len(futures), desc="ablation", unit="run"):
            dataset, row, split = futures[future]
            results.setdefault(f"{dataset} | {row}", {})[split] = future.result()
            # Written after every run, so a stopped benchmark keeps what it measured.
            (Path(out) / "ablation.json").write_text(json.dumps({"steps": steps, "cold_items": cold_items,
                                                                 "results": results}, indent=2))
    results = {name: results[name] for name in dict.fromkeys(f"{d} | {r}" for d, r, _ in runs)}  # in row order
    print(table(results))
    failed = [f"{name} ({split})" for name, result in results.items() for split, r in result.items() if "error" in r]
    if failed:
        raise RuntimeError(f"Runs {failed} failed (their errors are printed above); the others are in ablation.json.")
    plot_ablation(results, Path(out) / "ablation.png")


def _run(args: list[str], steps: int, out: str) -> dict:
    report = in_own_process(timed_fit, args, steps, 1, out, True)
    return report if "error" not in report else {"error": f"`train.py fit --config {' '.join(args)}` {report['error']}"}


def table(results: dict[str, dict]) -> str:
    """One line per row: the standard split's metrics, the cold run's cold / warm NDCG@10, time and memory."""
    lines = [f"{'dataset | row':<36} {'NDCG@10':>8} {'R@10':>7} {'cold N@10':>10} {'warm N@10':>10} "
             f"{'cold/warm':>9} {'fit+test s':>10} {'RSS GB':>7}"]
    for name, result in results.items():
        full, cold = result["full"], result["cold"]
        if "error" in full or "error" in cold:
            lines.append(f"{name:<36} failed")
            continue
        cold_ndcg, warm_ndcg = cold["test_cold_ndcg@10"], cold["test_warm_ndcg@10"]
        lines.append(f"{name:<36} {full['test_ndcg@10']:>8.4f} {full['test_recall@10']:>7.4f} {cold_ndcg:>10.4f} "
                     f"{warm_ndcg:>10.4f} {cold_ndcg / warm_ndcg:>9.2f} "
                     f"{full['fit_seconds'] + full['test_seconds']:>10.0f} {full['peak_rss_gb']:>7.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    run(main)
