"""Metrics of a recommendations Parquet against the held-out items of an export's dataset.

    python scripts/evaluate.py --recs recs.parquet --export exports/ml100k --split test --k [10,20]
"""

from __future__ import annotations

import json

from recsys_tt.cli import run
from recsys_tt.offline.scoring import evaluate_recommendations


def main(recs: str, export: str, split: str = "test", k: list[int] | None = None) -> dict:
    """Recall/NDCG/MRR@K over users with a held-out item, catalog coverage, novelty, intra-list diversity.

    Args:
        recs: Parquet with user_id, item_id, rank (as written by scripts/score_offline.py).
        export: the export folder whose dataset split holds the targets.
        split: "test" or "valid" targets.
        k: cut-offs (default 10 and 20).
    """
    metrics = evaluate_recommendations(recs, export, split, tuple(k or (10, 20)))
    width = max(map(len, metrics))
    for name, value in metrics.items():
        print(f"{name:<{width}}  {value:.4f}")
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    run(main)
