"""File helpers every stage shares: content hashes and the cache folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def default_cache_dir() -> Path:
    """Where downloaded data and token caches live: $RECSYS_TT_CACHE, else ~/.cache/recsys_tt."""
    return Path(os.environ.get("RECSYS_TT_CACHE", Path.home() / ".cache" / "recsys_tt"))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
