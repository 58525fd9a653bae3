"""Add cold-start items (id + text fields) to an export without retraining.

    python scripts/add_items.py --export exports/ml100k --items new_movies.csv
"""

from __future__ import annotations

import json

from recsys_tt.cli import run
from recsys_tt.export.catalog import add_items


def main(export: str, items: str) -> None:
    """Encode new items with the export's item tower and append them to its index, atomically.

    Args:
        export: folder written by scripts/export_index.py.
        items: CSV/Parquet/JSONL with item_id and the columns the export's item template names; ids must be new.
    """
    print(json.dumps(add_items(export, items)))


if __name__ == "__main__":
    run(main)
