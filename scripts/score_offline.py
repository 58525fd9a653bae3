"""Top-K recommendations for dataset users from an export folder, to Parquet (user_id, item_id, rank, score).

    python scripts/score_offline.py --export exports/ml100k --out recs.parquet --k 100 --split test
    python scripts/score_offline.py --export exports/ml100k --out new.parquet --users new_users.jsonl
    python scripts/score_offline.py --export DIR --out recs.parquet --accelerator gpu --devices 8 --strategy ddp
"""

from __future__ import annotations

import json

from recsys_tt.cli import run
from recsys_tt.offline.scoring import score_users


def main(export: str, out: str, k: int = 100, split: str = "test", users: str | None = None,
         user_ids: list[str] | None = None, batch_size: int = 512, accelerator: str = "cpu", devices: int = 1,
         strategy: str = "auto", num_nodes: int = 1) -> None:
    """Score users and write their top-K, seen items excluded, rank 1 = best.

    Args:
        export: folder written by scripts/export_index.py.
        out: Parquet file to write.
        k: items per user (at most the catalog size).
        split: "test" scores each user with the history before their test item (train + validation);
            "valid" with the training history only.
        users: JSONL (or CSV/Parquet) of new users, each with user_id and text and/or recent_item_ids (oldest
            first), scored instead of the dataset's users (cold start; unknown item ids are reported, dropped).
        user_ids: only these dataset users (default: all); unknown ids are reported and skipped.
        batch_size: users encoded and searched at once.
        accelerator: Lightning accelerator of the predict job ("cpu", "gpu", "auto").
        devices: devices per node; with more than one, each rank scores its share into a shard.
        strategy: Lightning strategy, e.g. "ddp" for many GPUs or nodes.
        num_nodes: nodes of the job.
    """
    report = score_users(export, out, k, split, user_ids, users, batch_size, accelerator, devices, strategy,
                         num_nodes)
    print(json.dumps(report))


if __name__ == "__main__":
    run(main)
