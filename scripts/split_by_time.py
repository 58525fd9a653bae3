"""Split each user's interactions by time into a past (to train on) and a future (held out, e.g. for simulation).

    python scripts/split_by_time.py --interactions ~/.cache/recsys_tt/ml-100k/interactions.csv --out data/ml100k_half

Per user, interactions are stably sorted by timestamp (ties keep file order); the first ``fraction`` (at least
``min_past``) go to past.csv, the rest to future.csv. Train on past.csv with ``--data.dataset files``.
"""

from __future__ import annotations

import json
from pathlib import Path

from recsys_tt.cli import run
from recsys_tt.data import parse_timestamps, read_table, require_columns


def main(interactions: str, out: str, fraction: float = 0.5, min_past: int = 3) -> None:
    """Write past.csv and future.csv under ``out``.

    Args:
        interactions: CSV/Parquet/JSONL with user_id, item_id, timestamp.
        out: output folder.
        fraction: share of each user's interactions kept in the past.
        min_past: fewest past interactions per user (users with fewer have no future).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}.")
    frame = read_table(interactions)
    require_columns(frame, ["user_id", "item_id", "timestamp"], interactions)
    frame = frame.reset_index(drop=True).assign(_order=lambda f: range(len(f)),
                                                _time=parse_timestamps(frame["timestamp"], interactions))
    frame = frame.sort_values(["user_id", "_time", "_order"], kind="stable")
    position = frame.groupby("user_id").cumcount()
    size = frame.groupby("user_id")["item_id"].transform("size")
    past = position < (size * fraction).astype(int).clip(lower=min_past)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("past", frame[past]), ("future", frame[~past])):
        part.sort_values("_order").drop(columns=["_order", "_time"]).to_csv(folder / f"{name}.csv", index=False)
    print(json.dumps({"past": int(past.sum()), "future": int((~past).sum()), "users": int(frame["user_id"].nunique()),
                      "out": str(folder)}))


if __name__ == "__main__":
    run(main)
