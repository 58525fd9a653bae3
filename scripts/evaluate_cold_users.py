"""How well an export serves users it never trained on, known by their profile text and their first few items.

    python scripts/split_new_users.py --interactions ~/.cache/recsys_tt/ml-100k/interactions.csv --out data/ml100k_users
    # train on data/ml100k_users/past.csv (--data.dataset files), export, then:
    python scripts/evaluate_cold_users.py --export exports/users --interactions data/ml100k_users/new_users.csv \\
        --users ~/.cache/recsys_tt/ml-100k/users.csv --plot new_users.png

See recsys_tt/cold_start.py for the protocol. Prints a table, then one JSON line per row.
"""

from __future__ import annotations

import json

from recsys_tt.cli import run
from recsys_tt.export.folder import ExportFolder
from recsys_tt.offline.cold_start import new_user_metrics
from recsys_tt.plots import plot_new_users


def main(export: str, interactions: str, users: str | None = None, context_sizes: list[int] | None = None,
         k: int = 10, plot: str | None = None) -> None:
    """Rank the catalog for each new user from their profile and first n items; score their later items.

    Args:
        export: export folder of a model trained without these users.
        interactions: user_id, item_id, timestamp of the new users (scripts/split_new_users.py's new_users.csv).
        users: users table with the columns of the export's profile template (None: no profile text).
        context_sizes: the numbers n of first items known about each user (default 0, 1, 3, 5, 10).
        k: cut-off.
        plot: PNG path for next-item NDCG@k and later-item precision@k against n.
    """
    rows = new_user_metrics(ExportFolder.load(export), interactions, users, context_sizes or [0, 1, 3, 5, 10], k)
    print(f"{'items':>5} {'ranker':<28} {'next R@' + str(k):>10} {'next NDCG@' + str(k):>12} "
          f"{'later P@' + str(k):>10} {'users':>6}")
    for r in rows:
        print(f"{r['context_items']:>5} {r['ranker']:<28} {r[f'next_recall@{k}']:>10.4f} "
              f"{r[f'next_ndcg@{k}']:>12.4f} {r[f'later_precision@{k}']:>10.4f} {r['users']:>6}")
    for r in rows:
        print(json.dumps(r))
    if plot:
        print(f"plot: {plot_new_users(rows, [f'next_ndcg@{k}', f'later_precision@{k}'], plot)}")


if __name__ == "__main__":
    run(main)
