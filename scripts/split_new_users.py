"""Hold out a random share of users entirely: train without them, then serve them as new (cold-start) users.

    python scripts/split_new_users.py --interactions ~/.cache/recsys_tt/ml-100k/interactions.csv --out data/ml100k_users

Writes past.csv (every interaction of the other users; train on it with ``--data.dataset files``) and
new_users.csv (every interaction of the held-out users), both in the input's row order. The users table stays
whole: held-out users keep their profile for scripts/evaluate_cold_users.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from recsys_tt.cli import run
from recsys_tt.data.splits import split_new_users
from recsys_tt.data.tables import read_table, require_columns


def main(interactions: str, out: str, fraction: float = 0.2, seed: int = 0) -> None:
    """Write past.csv and new_users.csv under ``out``.

    Args:
        interactions: CSV/Parquet/JSONL with user_id, item_id, timestamp.
        out: output folder.
        fraction: share of users held out.
        seed: seed of the random choice of users.
    """
    frame = read_table(interactions)
    require_columns(frame, ["user_id", "item_id", "timestamp"], interactions)
    past, new, held_out = split_new_users(frame, fraction, seed)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    past.to_csv(folder / "past.csv", index=False)
    new.to_csv(folder / "new_users.csv", index=False)
    print(json.dumps({"past": len(past), "new_users": len(held_out), "new_user_interactions": len(new),
                      "out": str(folder)}))


if __name__ == "__main__":
    run(main)
