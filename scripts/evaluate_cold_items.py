"""How well an export ranks items it never trained on, for users' later interactions with them.

    python scripts/evaluate_cold_items.py --export exports/half --future data/ml100k_half/future.csv

Cold items have no training interaction, so only their text places them; see recsys_tt/cold_start.py. Prints
the metrics and, for reference, the recall of a random ranking (what an id-only model can do for them).
"""

from __future__ import annotations

import json

from recsys_tt.cli import run
from recsys_tt.export.folder import ExportFolder
from recsys_tt.offline.cold_start import cold_item_metrics


def main(export: str, future: str, k: int = 10) -> None:
    """Rank each user's unseen cold items and score the later ones.

    Args:
        export: export folder of a trained model.
        future: user_id, item_id table of interactions after the training data (scripts/split_by_time.py).
        k: cut-off.
    """
    print(json.dumps(cold_item_metrics(ExportFolder.load(export), future, k)))


if __name__ == "__main__":
    run(main)
