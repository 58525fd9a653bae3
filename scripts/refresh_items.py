"""Refresh an export's item vectors from its serving log, without retraining the towers or re-encoding the catalog.

    python scripts/refresh_items.py --export exports/games --logs logs/games

Fits each item's id vector (new items: from their text vector) to the log's clicks and, with
--log_impressions (default 1), on every shown item, clicked or skipped, discounted by the examination of its
position. Rewrites the export atomically with a new model_version; serve it again to use it.
"""

from __future__ import annotations

import json

from recsys_tt.cli import run
from recsys_tt.offline.item_refresh import RefreshConfig, refresh_item_vectors


def main(export: str, logs: str, steps: int = 30, prior_precision: float = 20.0, log_impressions: float = 1.0,
         examination: list[float] | None = None, max_slates: int | None = None, skip_orphans: bool = False,
         cold_offset: bool = True) -> None:
    """Refresh the item vectors of ``export`` from the propensity log folder ``logs``.

    Args:
        export: folder written by scripts/export_index.py (items added since by scripts/add_items.py included).
        logs: propensity log folder of a server of this export (serve.py --log_dir).
        steps: L-BFGS iterations over the whole log.
        prior_precision: how strongly each id vector stays where it was (a Gaussian prior's precision).
        log_impressions: weight of every shown item's position-based likelihood (0: clicks only).
        examination: P(a user looks at position j), one number per position; default 1 / log2(j + 1).
        max_slates: learn from the most recent slates only, at most this many.
        skip_orphans: skip (and count) clicks whose slates the log's retention deleted, instead of refusing them.
        cold_offset: also fit one offset shared by every item without training interactions (added items included),
            so what the log says of the new items it showed moves the others, and items added later start from it.
    """
    config = RefreshConfig(steps, prior_precision, log_impressions, examination, max_slates, skip_orphans,
                           cold_offset)
    print(json.dumps(refresh_item_vectors(export, logs, config)))


if __name__ == "__main__":
    run(main)
