"""Serving (retrieval -> rerank -> exploration) is not built yet; it lands with the serving issue."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    sys.exit("serve.py: not yet. Serving lands with the export and serving issues; train with train.py meanwhile.")
