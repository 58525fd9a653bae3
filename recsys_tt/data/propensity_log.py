"""The propensity log: every served slate and every reward, as JSON lines, for off-policy evaluation.

A log folder holds ``impressions-*.jsonl`` (one line per served slate) and ``feedback-*.jsonl`` (one line per
reward). Each line is flushed as it is written, so a stopped server loses nothing it answered; files rotate
by size. Lines are ``Impression`` and ``Feedback`` records, written and read only here; each impression carries
its ``schema_version``. ``recsys_tt.offline.ope.bandit_feedback`` turns a folder into Open Bandit Pipeline's
dictionaries.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import threading
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)
SCHEMA_VERSION = 4  # of impression lines; lines written before it was recorded are version 1
# Version 2 added the user as served (user_text, history_ids), what training from logs reads; version 1 lines still
# serve off-policy evaluation. Version 3 added directed exploration (bonus, candidate_uncertainty) and user_key.
# Version 4 added catalog_size, so that learning from a slate ranks it against the catalog it was served from.
READABLE_VERSIONS = (1, 2, 3, 4)


@dataclass(frozen=True)
class Impression:
    """One served slate: who it was for, the candidates it was drawn from, what was shown, and how likely it was."""

    request_id: str
    time: str  # ISO 8601, UTC
    user_id: str | None  # None: a new user given by text and/or recent items
    new_user: bool
    history_length: int
    candidate_ids: list[str]  # best first, after rescoring, the scorer and MMR
    candidate_rows: list[int]  # rows of the export's items table
    candidate_scores: list[float]
    temperature: float
    head: int
    epsilon: float
    diversity_lambda: float
    k: int
    slate: list[str]  # item ids shown, in order
    slate_rows: list[int]
    pick_probabilities: list[float]  # P(position j's pick | picks before j)
    position_propensities: list[float] | None  # P(item at position j), estimated; None when not sampled
    slate_probability: float  # P(this ordered slate) = product of pick_probabilities
    propensity_samples: int
    seed: int
    model_version: str
    index_version: str
    user_text: str | None = None  # the profile text the user tower read ("" for none); None in version 1 lines
    history_ids: list[str] | None = None  # item ids the user vector was computed from, oldest first (version 2)
    bonus: float = 0.0  # directed exploration: sampled scores are candidate_scores + bonus x candidate_uncertainty
    candidate_uncertainty: list[float] | None = None  # per candidate (version 3; None when bonus is 0)
    user_key: str | None = None  # a new user's key across requests (version 3)
    catalog_size: int | None = None  # items the slate was chosen from: rows 0 to catalog_size - 1 (version 4)
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_json(cls, record: dict, where: str) -> Impression:
        version = record.get("schema_version", 1)
        if version not in READABLE_VERSIONS:
            raise ValueError(f"{where}: impression schema version {version}; this recsys_tt reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}.")
        return _from_json(cls, record, where)


@dataclass(frozen=True)
class Feedback:
    """A reward (e.g. 1 for a click) for one item of a logged slate."""

    request_id: str
    item_id: str
    reward: float
    time: str

    @classmethod
    def from_json(cls, record: dict, where: str) -> Feedback:
        return _from_json(cls, record, where)


def _from_json(cls: type, record: dict, where: str):
    """A record from a parsed JSON line; fields it does not know are ignored, fields it lacks are refused."""
    missing = [f.name for f in fields(cls) if f.name not in record and f.default is MISSING]
    if missing:
        raise ValueError(f"{where}: not a recsys_tt {cls.__name__.lower()} line (missing {missing[:5]}).")
    return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})


class _RotatingJsonl:
    def __init__(self, folder: Path, prefix: str, max_bytes: int, fsync: bool) -> None:
        self.folder, self.prefix, self.fsync, self.max_bytes = folder, prefix, fsync, max_bytes
        self.file = None

    def write(self, record: dict) -> bool:
        """Appends one record; returns whether it started a new file."""
        started = self.file is None or self.file.tell() >= self.max_bytes
        if started:
            self.close()
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%f")
            path = self.folder / f"{self.prefix}-{stamp}-{os.getpid()}.jsonl"
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (held open across writes)
        whole = self.file.tell()
        try:
            self.file.write(json.dumps(record, allow_nan=False, ensure_ascii=False) + "\n")  # UTF-8, not \u escapes
            self.file.flush()
            if self.fsync:
                os.fsync(self.file.fileno())
        except OSError:
            self._abandon(whole)
            raise
        return started

    def _abandon(self, whole: int) -> None:
        """A full disk can leave part of a record written: cut the file back to its last whole record (truncating
        needs no space; a file with none is removed). Should that fail too, the next record still starts a new file,
        so a torn line can only be the last of its file, which readers skip."""
        file, self.file = self.file, None
        with contextlib.suppress(OSError):  # its buffer cannot be written either
            file.close()
        with contextlib.suppress(OSError):
            if whole:
                os.truncate(file.name, whole)
            else:
                os.unlink(file.name)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class PropensityLog:
    """Append-only, thread-safe impression and feedback log in ``folder``."""

    def __init__(self, folder: str | Path, max_bytes: int = 64 * 2**20, max_files: int | None = 1000,
                 fsync: bool = False) -> None:
        """Files rotate at ``max_bytes``. Beyond ``max_files`` impression files the oldest are deleted, each with the
        feedback files written before the next one began (None keeps all): a cap on disk use that never keeps a
        click whose slate it deleted, unless the click came after its slate's file was closed."""
        if max_bytes <= 0 or (max_files is not None and max_files <= 0):
            raise ValueError(f"max_bytes and max_files must be positive, got {max_bytes} and {max_files}.")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_files = max_files
        self._lock = threading.Lock()
        self._impressions = _RotatingJsonl(self.folder, "impressions", max_bytes, fsync)
        self._feedback = _RotatingJsonl(self.folder, "feedback", max_bytes, fsync)

    def log_slate(self, impression: Impression) -> None:
        with self._lock:
            if self._impressions.write(_fields(impression)):
                # Feedback from now on starts a file of its own, so each feedback file refers to slates of the
                # impression files begun before it, and retires with them.
                self._feedback.close()
                self._retire()

    def log_feedback(self, feedback: Feedback) -> None:
        with self._lock:
            self._feedback.write(_fields(feedback))

    def _retire(self) -> None:
        """Deletes the oldest impression files beyond ``max_files`` and the feedback files begun before the oldest
        impression file kept (names sort by creation time)."""
        if self.max_files is None:
            return
        files = sorted(self.folder.glob("impressions-*.jsonl"))
        retired, kept = files[: max(len(files) - self.max_files, 0)], files[-self.max_files:]
        if not retired:
            return
        log.warning("Propensity log %s holds more than %d impression files; deleting the oldest %d (%s first) and "
                    "their feedback.", self.folder, self.max_files, len(retired), retired[0].name)
        oldest_kept = _stamp(kept[0])
        for old in [*retired, *(f for f in self.folder.glob("feedback-*.jsonl") if _stamp(f) < oldest_kept)]:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._impressions.close()
            self._feedback.close()


def _stamp(path: Path) -> str:
    """When a log file was begun: the sortable stamp in its name (prefix-stamp-pid.jsonl)."""
    return path.name.split("-")[1]


def _fields(record) -> dict:
    """A record's fields by name. Shallow: ``dataclasses.asdict`` deep-copies every list, which cost a server about
    8 ms a slate of 250 candidates."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def _read(folder: Path, prefix: str, kind: type) -> pd.DataFrame:
    """Every line of the folder's ``prefix-*.jsonl`` files read as a ``kind`` record, one row each: its fields as
    columns, and ``source`` ("file, line N") for messages about it."""
    rows = [row for path in sorted(folder.glob(f"{prefix}-*.jsonl")) for row in _read_file(path, kind)]
    return pd.DataFrame(rows, columns=[*(f.name for f in fields(kind)), "source"])


def _read_file(path: Path, kind: type) -> list[dict]:
    """One file's records. A record cut short (a write the disk could not finish) lacks its newline, so it can only
    be the file's last line: it is skipped with a warning; a bad line anywhere else is refused."""
    rows = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                values = json.loads(line)
            except json.JSONDecodeError as err:
                if not line.endswith("\n"):
                    log.warning("%s, line %d: a record cut short (the disk was full when it was written?); skipped.",
                                path, number)
                    continue
                raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg}).") from err
            where = f"{path}, line {number}"
            rows.append({**_fields(kind.from_json(values, where)), "source": where})
    return rows


def recent_slates(folder: str | Path, count: int) -> list[tuple[str, list[str], str | None]]:
    """The last ``count`` slates logged in ``folder`` as (request id, shown item ids, memory key), oldest first:
    those a restarted server must still take feedback for. Reads the newest files only, as far back as ``count``
    needs."""
    slates: list[tuple[str, list[str], str | None]] = []
    for path in sorted(Path(folder).glob("impressions-*.jsonl"), reverse=True):
        if len(slates) >= count:
            break
        rows = _read_file(path, Impression)
        slates = [(row["request_id"], row["slate"], memory_key(row["user_id"], row.get("user_key")))
                  for row in rows] + slates
    return slates[-count:] if count else []


def memory_key(user_id: str | None, user_key: str | None) -> str | None:
    """Whom a server remembers a slate for: a known user by id, a new user by the key their requests carry."""
    if user_id is not None:
        return f"id:{user_id}"
    return None if user_key is None else f"key:{user_key}"


def read_impressions(folder: str | Path) -> pd.DataFrame:
    """One row per served slate (``Impression`` fields and ``source`` as columns), oldest file first."""
    frame = _read(Path(folder), "impressions", Impression)
    if frame.empty:
        raise ValueError(f"{folder} holds no impressions-*.jsonl; serve with --log_dir {folder} first.")
    return frame


def read_feedback(folder: str | Path) -> pd.DataFrame:
    """One row per reward (``Feedback`` fields and ``source`` as columns; empty when none were sent)."""
    return _read(Path(folder), "feedback", Feedback)


@dataclass(frozen=True)
class LogFolder:
    """A log folder's slates and the rewards on them, and the rewards whose slate it no longer holds."""

    folder: Path
    impressions: pd.DataFrame  # every slate (``read_impressions``)
    feedback: pd.DataFrame  # the last reward of each (request, item) whose slate is in the folder
    orphans: pd.DataFrame  # the last rewards whose request has no slate in the folder

    @classmethod
    def read(cls, folder: str | Path) -> LogFolder:
        """Reads the folder and logs what it holds (``summary``), so every reader reports the same counts."""
        impressions, feedback = read_impressions(folder), latest_feedback(folder)
        known = feedback["request_id"].isin(impressions["request_id"])
        contents = cls(Path(folder), impressions, feedback[known], feedback[~known])
        (log.warning if len(contents.orphans) else log.info)("%s", contents.summary())
        return contents

    def summary(self) -> str:
        """What every reader of the folder uses and skips, in the same words."""
        clicks = int((self.feedback["reward"] > 0).sum())
        text = f"{self.folder}: {len(self.impressions)} slates, {len(self.feedback)} rewards on them ({clicks} clicks)"
        if len(self.orphans):
            text += (f"; {len(self.orphans)} rewards ({int((self.orphans['reward'] > 0).sum())} clicks) name slates "
                     "the folder does not hold (deleted by retention, or logged elsewhere)")
        return text


def latest_feedback(folder: str | Path) -> pd.DataFrame:
    """The last reward sent for each (request, item): a client may correct a reward by sending it again."""
    return read_feedback(folder).drop_duplicates(["request_id", "item_id"], keep="last")
