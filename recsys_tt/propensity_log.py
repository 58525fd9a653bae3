"""The propensity log: every served slate and every reward, as JSON lines, for off-policy evaluation.

A log folder holds ``impressions-*.jsonl`` (one line per served slate) and ``feedback-*.jsonl`` (one line per
reward). Each line is flushed as it is written, so a stopped server loses nothing it answered; files rotate
by size. ``bandit_feedback`` turns a folder into Open Bandit Pipeline's dictionaries.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd


class _RotatingJsonl:
    def __init__(self, folder: Path, prefix: str, max_bytes: int, fsync: bool) -> None:
        self.folder, self.prefix, self.max_bytes, self.fsync = folder, prefix, max_bytes, fsync
        self.file = None

    def write(self, record: dict) -> None:
        if self.file is None or self.file.tell() >= self.max_bytes:
            self.close()
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%f")
            path = self.folder / f"{self.prefix}-{stamp}-{os.getpid()}.jsonl"
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (held open across writes)
        self.file.write(json.dumps(record, allow_nan=False) + "\n")
        self.file.flush()
        if self.fsync:
            os.fsync(self.file.fileno())

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class PropensityLog:
    """Append-only, thread-safe impression and feedback log in ``folder``."""

    def __init__(self, folder: str | Path, max_bytes: int = 64 * 2**20, fsync: bool = False) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}.")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._impressions = _RotatingJsonl(self.folder, "impressions", max_bytes, fsync)
        self._feedback = _RotatingJsonl(self.folder, "feedback", max_bytes, fsync)

    def log_slate(self, record: dict) -> None:
        with self._lock:
            self._impressions.write(record)

    def log_feedback(self, record: dict) -> None:
        with self._lock:
            self._feedback.write(record)

    def close(self) -> None:
        with self._lock:
            self._impressions.close()
            self._feedback.close()


def _read(folder: Path, prefix: str) -> pd.DataFrame:
    rows = []
    for path in sorted(folder.glob(f"{prefix}-*.jsonl")):
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg}).") from err
    return pd.DataFrame(rows)


def read_impressions(folder: str | Path) -> pd.DataFrame:
    """One row per served slate, oldest file first."""
    frame = _read(Path(folder), "impressions")
    if frame.empty:
        raise ValueError(f"{folder} holds no impressions-*.jsonl; serve with --log_dir {folder} first.")
    return frame


def read_feedback(folder: str | Path) -> pd.DataFrame:
    """One row per reward: request_id, item_id, reward (empty when none were sent)."""
    frame = _read(Path(folder), "feedback")
    return frame if not frame.empty else pd.DataFrame(columns=["request_id", "item_id", "reward"])


def slate_positions(folder: str | Path, impressions: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (slate, position), slate by slate in log order, with its reward (0 unless feedback said
    otherwise; the last reward wins). ``impressions`` saves reading them again when the caller has them."""
    impressions = read_impressions(folder) if impressions is None else impressions
    rows = impressions[["request_id", "slate_rows", "slate", "pick_probabilities", "position_propensities",
                        "slate_probability"]].copy()
    rows["position"] = rows["slate"].map(lambda s: list(range(len(s))))
    rows["position_propensities"] = [p if isinstance(p, list) else [np.nan] * len(s)  # not estimated
                                     for p, s in zip(rows["position_propensities"], rows["slate"])]
    rows["pscore_cascade"] = rows["pick_probabilities"].map(lambda p: np.cumprod(p).tolist())
    rows = rows.explode(["slate_rows", "slate", "pick_probabilities", "position_propensities", "position",
                         "pscore_cascade"], ignore_index=True)
    rows = rows.rename(columns={"slate": "item_id", "slate_rows": "action"})
    feedback = read_feedback(folder).drop_duplicates(["request_id", "item_id"], keep="last")
    rows = rows.merge(feedback[["request_id", "item_id", "reward"]], on=["request_id", "item_id"], how="left")
    rows["reward"] = rows["reward"].fillna(0.0).astype(float)
    return rows


def bandit_feedback(folder: str | Path, n_actions: int, kind: str = "slate") -> dict:
    """Open Bandit Pipeline's ``bandit_feedback`` of a log folder.

    kind="slate": one round per (slate, position), with slate_id, pscore (the slate's probability),
    pscore_cascade (probability of the slate down to that position) and pscore_item_position (the item's
    per-position propensity) for obp.ope.SlateOffPolicyEvaluation. kind="position": action, position, reward
    and pscore = the per-position propensity, for obp.ope.OffPolicyEvaluation with position-based estimators.
    """
    rows = slate_positions(folder)
    slate_id = pd.factorize(rows["request_id"])[0]
    common = {"n_rounds": len(rows), "action": rows["action"].to_numpy(np.int64),
              "position": rows["position"].to_numpy(np.int64), "reward": rows["reward"].to_numpy(float)}
    if kind == "position":
        if rows["position_propensities"].isna().any():
            raise ValueError("Some slates were logged without per-position propensities (propensity_samples=0).")
        return {**common, "n_actions": n_actions, "pscore": rows["position_propensities"].to_numpy(float)}
    if kind != "slate":
        raise ValueError(f"kind must be 'slate' or 'position', got {kind!r}.")
    return {**common, "n_unique_action": n_actions, "slate_id": slate_id,
            "len_list": int(rows.groupby("request_id").size().max()),
            "pscore": rows["slate_probability"].to_numpy(float),
            "pscore_cascade": rows["pscore_cascade"].to_numpy(float),
            "pscore_item_position": rows["position_propensities"].to_numpy(float)}
