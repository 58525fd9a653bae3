"""Amazon review data sets that are read from a folder the user names, never downloaded or shipped (their terms
allow research use only). Every file is pinned by sha256, so results stay comparable with published ones.

- Amazon Beauty (2014, 5-core, the build most sequential and LLM-based recommendation papers report on): three files
  as its NOTICE.md describes them (``user_sequence.txt``, ``item_id_to_int.json``, ``products_lookup.csv``), converted
  once to recsys_tt's canonical CSV files in the cache folder:
  - interactions: one row per (user, item) in the order the user reviewed them; the files carry no dates, so the
    timestamp is the item's position in the user's sequence, which keeps the leave-one-out split in review order;
  - items: ``item_id`` is the ASIN, ``title`` the product title; there is no users table (users are their items).
- Amazon Video Games (2018, 5-core, with review dates): ``interactions.csv`` (user_id, item_id, timestamp in Unix
  seconds) and ``items.csv`` (item_id, title) are canonical already and are read where they are.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pandas as pd

from recsys_tt.data.cache import ensure_converted
from recsys_tt.data.tables import DataError
from recsys_tt.files import default_cache_dir, sha256_file

log = logging.getLogger(__name__)

BEAUTY_SHA256 = {
    "user_sequence.txt": "47197cbee7bdc1896926e10d96b807dce0aecb9a1f0c2ccc887c21090237c9b7",
    "item_id_to_int.json": "3d1a1d362c7daeddf616057fae8fa24af9d70902fdaf4631852231a9953afa50",
    "products_lookup.csv": "65133eca0615999df67fc5b26a93a7da762e53e613a083fd6b9e37174896d128",
}
GAMES_SHA256 = {
    "interactions.csv": "2810eaf2b2f5b27c85c341c7974d4c8c200ecf223880f3516091b0bcc1ba417c",
    "items.csv": "1611e4fca5de35e33edc68ef5d279f050c77a2e9458e15561d069e72159430b7",
}
UNTITLED = "Untitled beauty product"  # the text of the few products whose title is empty in the source


def ensure_amazon_beauty(folder: str | Path | None, cache_dir: str | Path | None = None) -> Path:
    """A cache folder holding canonical ``interactions.csv`` and ``items.csv`` converted from ``folder``."""
    if folder is None:
        raise DataError("data.dataset: amazon-beauty needs data.folder, the folder holding user_sequence.txt, "
                        "item_id_to_int.json and products_lookup.csv (e.g. ../shared/data/amazon-beauty).")
    source = Path(folder)
    check_pinned(source, BEAUTY_SHA256, "Amazon Beauty")
    return ensure_converted(Path(cache_dir or default_cache_dir()) / "amazon-beauty",
                            lambda staging: _convert(source, staging))


def amazon_games(folder: str | Path | None) -> Path:
    """``folder`` once its ``interactions.csv`` and ``items.csv`` are checked to be the pinned Video Games build."""
    if folder is None:
        raise DataError("data.dataset: amazon-games needs data.folder, the folder holding interactions.csv and "
                        "items.csv (e.g. ../shared/data/amazon-games).")
    check_pinned(Path(folder), GAMES_SHA256, "Amazon Video Games")
    return Path(folder)


def check_pinned(folder: Path, pins: dict[str, str], name: str) -> None:
    """Refuses a folder whose files are missing or differ from the pinned build, saying what to do."""
    for file, digest in pins.items():
        path = folder / file
        if not path.is_file():
            raise DataError(f"{path} is missing; data.folder must hold the {name} files {sorted(pins)} (see the "
                            "README's data section).")
        if sha256_file(path) != digest:
            raise DataError(f"{path} is not the pinned {name} build (sha256 differs); restore the original file: "
                            "results on a changed file cannot be compared with published ones.")


def _convert(source: Path, out: Path) -> str:
    users, items = [], []
    with open(source / "user_sequence.txt", encoding="utf-8") as handle:
        for line in handle:
            user, *sequence = line.split()
            users += [user] * len(sequence)
            items += sequence
    positions = pd.Series(users).groupby(users).cumcount()
    pd.DataFrame({"user_id": users, "item_id": items, "timestamp": positions}).to_csv(
        out / "interactions.csv", index=False)
    titles = _titles(source)
    titles.to_csv(out / "items.csv", index=False, quoting=csv.QUOTE_NONNUMERIC)
    return f"{source.resolve()} (Amazon Beauty 5-core, pinned sha256)"


def _titles(source: Path) -> pd.DataFrame:
    asin_to_int = json.loads((source / "item_id_to_int.json").read_text(encoding="utf-8"))
    lookup = pd.read_csv(source / "products_lookup.csv", dtype={"name": str}, keep_default_na=False)
    names = dict(zip(lookup["global_product_id"].astype(int), lookup["name"].str.strip()))
    frame = pd.DataFrame({"item_id": list(asin_to_int), "title": [names.get(i, "") for i in asin_to_int.values()]})
    empty = frame["title"] == ""
    if empty.any():
        log.info("Amazon Beauty: %d of %d products have no title; their text is %r", int(empty.sum()), len(frame),
                 UNTITLED)
    return frame.assign(title=frame["title"].where(~empty, UNTITLED))
