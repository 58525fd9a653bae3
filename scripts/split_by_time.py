"""Split each user's interactions by time into a past (to train on) and a future (held out, e.g. for simulation).

    python scripts/split_by_time.py --interactions ~/.cache/recsys_tt/ml-100k/interactions.csv --out data/ml100k_half

Per user, interactions are stably sorted by timestamp (ties keep file order); the first ``fraction`` (at least
``min_past``) go to past.csv, the rest to future.csv. Train on past.csv with ``--data.dataset files``.
"""

from __future__ import annotations

import json
from pathlib import Path

from recsys_tt.cli import run
from recsys_tt.data.splits import split_by_time
from recsys_tt.data.tables import read_table, require_columns


def main(interactions: str, out: str, fraction: float = 0.5, min_past: int = 3) -> None:
    """Write past.csv and future.csv under ``out``.

    Args:
        interactions: CSV/Parquet/JSONL with user_id, item_id, timestamp.
        out: output folder.
        fraction: share of each user's interactions kept in the past.
        min_past: fewest past interactions per user (users with fewer have no future).
    """
    frame = read_table(interactions)
    require_columns(frame, ["user_id", "item_id", "timestamp"], interactions)
    past, future = split_by_time(frame, interactions, fraction, min_past)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    past.to_csv(folder / "past.csv", index=False)
    future.to_csv(folder / "future.csv", index=False)
    print(json.dumps({"past": len(past), "future": len(future), "users": int(frame["user_id"].nunique()),
                      "out": str(folder)}))


if __name__ == "__main__":
    run(main)
