"""Datasets converted once into canonical CSV files in a cache folder, written atomically and verified on each load.

Each folder holds ``SOURCE.json``: where the files came from and the sha256 of every file, so a cache that was
changed or truncated after it was written is refused instead of silently trained on.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from recsys_tt.files import sha256_file

log = logging.getLogger(__name__)


def ensure_converted(target: Path, write: Callable[[Path], str]) -> Path:
    """``target`` once it holds the files ``write(folder)`` writes there (it returns where they came from)."""
    if (target / "SOURCE.json").exists():
        _verify(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        staging = Path(tmp) / target.name
        staging.mkdir()
        origin = write(staging)
        checksums = {file.name: sha256_file(file) for file in sorted(staging.iterdir())}
        (staging / "SOURCE.json").write_text(json.dumps({"origin": origin, "sha256": checksums}, indent=2))
        try:  # rename is atomic: a crash leaves no half folder that looks valid
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "SOURCE.json").exists():
                raise
    log.info("%s ready (from %s)", target, json.loads((target / "SOURCE.json").read_text())["origin"])
    return target


def _verify(folder: Path) -> None:
    recorded = json.loads((folder / "SOURCE.json").read_text())["sha256"]
    for file, digest in recorded.items():
        if not (folder / file).exists() or sha256_file(folder / file) != digest:
            raise RuntimeError(f"{folder / file} is missing or does not match the checksum recorded when it was "
                               f"written; delete {folder} to convert the dataset again.")
