"""Interaction data: reading CSV/Parquet/JSONL tables, checking them, and the leave-one-out split by time.

Ids are kept as strings as they appear in the files; models work with dense indices (row order of the items
table, first appearance of users), and the maps between the two live here.
"""

from __future__ import annotations

import codecs
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

_FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".jsonl": "json", ".json": "json"}


class DataError(ValueError):
    """Input data that cannot be used as given; the message names the file, row and what to fix."""


def read_table(path: str | Path) -> pd.DataFrame:
    """Reads a CSV/TSV/Parquet/JSONL file through HF ``datasets`` (Arrow-cached) into a DataFrame."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist.")
    builder = _FORMATS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unsupported extension {path.suffix!r}; use one of {sorted(_FORMATS)}.")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty; it needs a header row and data rows.")
    if builder != "parquet":
        head = _require_utf8(path)
        if builder == "csv" and len(list(itertools.islice((x for x in head.splitlines() if x.strip()), 2))) < 2:
            raise DataError(f"{path} has no data rows (a header alone?).")
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as err:  # datasets raises many types for malformed files; all mean the same to the user
        raise DataError(f"{path} could not be parsed as {builder}: {_root_cause(err)}") from err
    return table.to_pandas()


def _root_cause(err: BaseException) -> str:
    """The innermost error's message: datasets wraps the parser's (which names the line) in a generic one."""
    while (inner := err.__cause__ or err.__context__) is not None:
        err = inner
    return str(err)


def _require_utf8(path: Path, probe: int = 1 << 20) -> str:
    """The file's first ``probe`` bytes as text; text tables must be UTF-8, anything else would give wrong ids and
    texts, or a parser's puzzle."""
    with open(path, "rb") as handle:
        head = handle.read(probe)
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < probe)
    except UnicodeDecodeError as err:
        kind = "UTF-16" if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "not UTF-8 (Latin-1?)"
        raise DataError(f"{path} is {kind}: byte {err.start} is not UTF-8; re-save the file as UTF-8.") from err


def require_columns(frame: pd.DataFrame, columns: list[str], path: str | Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks column(s) {missing}; it has {list(frame.columns)}.")


def read_ids(path: str | Path, id_columns: list[str], other_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A table with its id columns normalised as training reads them (strings; "12.0" is "12"; blanks refused)."""
    frame = read_table(path)
    require_columns(frame, [*id_columns, *other_columns], path)
    return frame.assign(**{column: _id_column(frame, column, path) for column in id_columns})


def _id_column(frame: pd.DataFrame, column: str, path: str | Path) -> pd.Series:
    ids = frame[column]
    empty = ids.isna() | (ids.astype(str).str.strip() == "")
    if empty.any():
        raise DataError(f"{path}, row {int(np.flatnonzero(empty)[0]) + 2}: empty {column}; every row needs one.")
    # Integer ids read back as float when a column has gaps; "12.0" must still match "12".
    if pd.api.types.is_float_dtype(ids) and (ids == ids.round()).all():
        ids = ids.astype("int64")
    return ids.astype(str).str.strip()


@dataclass
class InteractionData:
    """Items, optional users and time-ordered interaction sequences, all indexed densely."""

    items: pd.DataFrame  # row i describes item index i; column item_id holds the original id
    users: pd.DataFrame | None  # indexed by original user id
    user_ids: list[str]  # user index -> original id
    sequences: list[np.ndarray]  # user index -> item indices, stable-sorted by timestamp (ties keep file order)

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    def item_index(self) -> dict[str, int]:
        return {item_id: i for i, item_id in enumerate(self.items["item_id"])}


def load_interaction_data(interactions: str | Path, items: str | Path, users: str | Path | None = None,
                          min_rating: float | None = None, catalog: str = "all",
                          before: str | None = None) -> InteractionData:
    """Loads and checks the three tables; see the README's "Custom datasets" section for their columns.

    ``catalog`` "rated" keeps only the items that some kept interaction names; "all" keeps the whole items table.
    ``before`` (a date, ISO 8601) keeps only the interactions before it: the world as it was at that time.
    """
    item_frame = _load_items(items)
    user_frame = _load_users(users) if users else None
    inter = read_ids(interactions, ["user_id", "item_id"], ("timestamp",))
    inter = inter.assign(timestamp=parse_timestamps(inter["timestamp"], interactions))
    if min_rating is not None:
        require_columns(inter, ["rating"], interactions)
        inter = inter[inter["rating"].astype(float) >= min_rating]
    if before is not None:
        inter = inter[inter["timestamp"] < cut_seconds(before)]
        if inter.empty:
            raise DataError(f"{interactions}: no interaction is before {before}; choose a later data.before.")
    repeated = int(inter.duplicated(["user_id", "item_id", "timestamp"]).sum())
    if repeated:  # kept: in re-consumption data (listens, purchases) a repeat is signal, and the split needs no rule
        log.info("%s: %d rows repeat an earlier (user_id, item_id, timestamp); kept as interactions of their own",
                 interactions, repeated)
    if catalog == "rated":
        item_frame = _rated_items(item_frame, inter["item_id"])
    index = {item_id: i for i, item_id in enumerate(item_frame["item_id"])}
    item_idx = inter["item_id"].map(index)
    if item_idx.isna().any():
        row = int(np.flatnonzero(item_idx.isna().to_numpy())[0])
        raise DataError(f"{interactions}, row {row + 2}: item_id {inter['item_id'].iloc[row]!r} is not in {items}; "
                        "add the item there or drop the interaction.")
    if user_frame is not None:
        unknown = ~inter["user_id"].isin(user_frame.index)
        if unknown.any():
            row = int(np.flatnonzero(unknown.to_numpy())[0])
            raise DataError(f"{interactions}, row {row + 2}: user_id {inter['user_id'].iloc[row]!r} is not in {users}.")
    user_ids, sequences = user_sequences(inter["user_id"], item_idx.astype("int64"), inter["timestamp"])
    log.info("Loaded %d interactions, %d users, %d items", len(inter), len(user_ids), len(item_frame))
    return InteractionData(item_frame, user_frame, user_ids, sequences)


def _rated_items(items: pd.DataFrame, rated: pd.Series) -> pd.DataFrame:
    keep = items["item_id"].isin(set(rated))
    if not keep.all():
        log.info("Catalog: %d of %d items have interactions; the other %d are left out (data.catalog: all keeps "
                 "them)", int(keep.sum()), len(items), int((~keep).sum()))
    return items[keep].reset_index(drop=True)


def user_sequences(users: pd.Series, items: pd.Series, timestamps: pd.Series) -> tuple[list[str], list[np.ndarray]]:
    """Per user (in order of first appearance by time), their items sorted by time; equal times keep file order."""
    frame = pd.DataFrame({"user": users.to_numpy(), "item": items.to_numpy(), "ts": np.asarray(timestamps)})
    grouped = frame.sort_values("ts", kind="stable").groupby("user", sort=False)["item"]
    user_ids = list(grouped.groups.keys())
    return user_ids, [grouped.get_group(u).to_numpy() for u in user_ids]


def _load_items(path: str | Path) -> pd.DataFrame:
    frame = read_ids(path, ["item_id"])
    duplicated = frame["item_id"].duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise DataError(f"{path}, row {row + 2}: duplicate item_id {frame['item_id'].iloc[row]!r}; ids must be unique.")
    if len(frame.columns) < 2:
        raise DataError(f"{path} has no text columns besides item_id; add e.g. a title column.")
    return frame.reset_index(drop=True)


def _load_users(path: str | Path) -> pd.DataFrame:
    frame = read_ids(path, ["user_id"])
    if frame["user_id"].duplicated().any():
        raise DataError(f"{path}: duplicate user_id {frame['user_id'][frame['user_id'].duplicated()].iloc[0]!r}.")
    return frame.set_index("user_id")


def cut_seconds(date: str) -> float:
    """Unix seconds of an ISO 8601 date (UTC unless it says otherwise)."""
    try:
        stamp = pd.Timestamp(date)
    except ValueError as err:
        raise DataError(f"{date!r} is not a date; write it as ISO 8601, e.g. 2016-05-14.") from err
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp
    return (stamp - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)


def parse_timestamps(column: pd.Series, path: str | Path) -> np.ndarray:
    """Unix seconds from numbers or dates (ISO 8601 and the like), cell by cell, so the two may mix; a bad value is
    refused with its row."""
    if pd.api.types.is_numeric_dtype(column):
        values = column.to_numpy(dtype="float64")
    else:
        text = column.astype(str).str.strip()
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64", copy=True)
        dates = pd.to_datetime(text[np.isnan(values)], errors="coerce", utc=True, format="mixed")
        seconds = ((dates - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype="float64")
        values[np.isnan(values)] = np.where(dates.isna().to_numpy(), np.nan, seconds)
    bad = np.isnan(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}, row {row + 2}: timestamp {column.iloc[row]!r} is not a number or a date; "
                        "use Unix seconds or ISO 8601.")
    return values


@dataclass
class LeaveOneOut:
    """Per user: all but the last two interactions train; the second to last validates; the last tests.

    Users with two interactions have no validation item, users with one have neither (index -1).
    """

    train: list[np.ndarray]
    valid: np.ndarray
    test: np.ndarray

    @classmethod
    def split(cls, sequences: list[np.ndarray]) -> LeaveOneOut:
        train, valid, test = [], [], []
        for seq in sequences:
            n_eval = 2 if len(seq) >= 3 else len(seq) - 1
            train.append(seq[: len(seq) - n_eval])
            valid.append(seq[-2] if n_eval == 2 else -1)
            test.append(seq[-1] if n_eval >= 1 else -1)
        return cls(train, np.asarray(valid, dtype=np.int64), np.asarray(test, dtype=np.int64))

    def history(self, user: int, stage: str) -> np.ndarray:
        """Items a user had before the target of ``stage`` ('valid' or 'test'), or all of them ('all'), oldest first."""
        if stage == "valid":
            return self.train[user]
        held_out = (self.valid[user], self.test[user]) if stage == "all" else (self.valid[user],)
        return np.append(self.train[user], [i for i in held_out if i >= 0]).astype(np.int64)

    def targets(self, stage: str) -> np.ndarray:
        return self.valid if stage == "valid" else self.test

    def repeated_targets(self, stage: str) -> np.ndarray:
        """Users whose ``stage`` target already occurs in their history. Full ranking excludes the history, as it ranks
        the items a user has not had, so these targets cannot be hit: they count as misses."""
        targets = self.targets(stage)
        return np.asarray([u for u, t in enumerate(targets) if t >= 0 and t in self.history(u, stage)], dtype=np.int64)


def item_counts(sequences: list[np.ndarray], num_items: int) -> np.ndarray:
    """How often each item occurs in the sequences (e.g. the training parts of a split)."""
    return np.bincount(np.concatenate(sequences), minlength=num_items) if sequences else np.zeros(num_items)
