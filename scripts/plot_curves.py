"""Plot training loss and validation metrics of a run (the same plot `fit` writes as curves.png).

    python scripts/plot_curves.py --metrics runs/ml100k_minilm/version_0/metrics.csv --out curves.png
"""

from __future__ import annotations

from recsys_tt.cli import run
from recsys_tt.plots import plot_curves


def main(metrics: str, out: str = "curves.png", metric: str = "ndcg@10") -> None:
    """Plot a CSVLogger metrics file.

    Args:
        metrics: path of metrics.csv written by the CSV logger.
        out: PNG to write.
        metric: validation metric to plot next to val/recall@10.
    """
    print(plot_curves(metrics, out, metric))


if __name__ == "__main__":
    run(main)
