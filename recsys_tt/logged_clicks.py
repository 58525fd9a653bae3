"""Training examples from a serving log: each click, with the user as served and how likely its pick was.

A propensity log folder (``serve.py --log_dir``, or the simulator's) holds impression and feedback lines. Every
reward > 0 on an item of a logged slate is a click; it becomes one example: the user's text and the history
their vector was computed from when the slate was served, the clicked item, the logging policy's probability of
the pick that showed it, the items shown above it (the picks before it) and the slate's size. The log is only
read. Lines that cannot become examples (from before schema version 2, items outside the training catalog,
feedback for requests the log does not hold) are refused together, each with its file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recsys_tt.propensity_log import latest_feedback, read_impressions

_SHOWN = 5  # problems quoted in the error


@dataclass(frozen=True)
class LoggedClicks:
    """One entry per click, in log order."""

    profiles: list[str]  # the user text the user tower read ("" for none)
    histories: list[np.ndarray]  # catalog rows the user vector was computed from, oldest first
    items: np.ndarray  # (E,) catalog row of the clicked item
    pick_probability: np.ndarray  # (E,) logging policy's P(that pick | the picks before it)
    above: list[np.ndarray]  # catalog rows shown above the clicked item: the picks before it
    slate_size: np.ndarray  # (E,) items in the slate

    def __len__(self) -> int:
        return len(self.items)

    def item_counts(self, num_items: int) -> np.ndarray:
        return np.bincount(self.items, minlength=num_items)


def read_clicks(folder: str | Path) -> pd.DataFrame:
    """The feedback rows of a log folder that are clicks: the last reward of an item of a slate, when above 0."""
    feedback = latest_feedback(folder)
    return feedback[feedback["reward"] > 0]


def read_logged_clicks(folder: str | Path, item_rows: dict[str, int]) -> LoggedClicks:
    """The clicks of a log folder as examples over the catalog ``item_rows`` (item id -> row)."""
    impressions, problems = read_impressions(folder), []
    old = impressions["history_ids"].isna()
    problems += [f"{where}: logged before impression schema version 2, without the user as served"
                 for where in impressions.loc[old, "source"]]
    clicks = read_clicks(folder)
    unknown = ~clicks["request_id"].isin(impressions["request_id"])
    problems += [f"{where}: request_id {request!r} has no impression in {folder}"
                 for where, request in clicks.loc[unknown, ["source", "request_id"]].itertuples(index=False)]
    impressions = impressions[~old].set_index("request_id")
    clicks = clicks[clicks["request_id"].isin(impressions.index)]  # clicks on old lines: reported with their line
    served = impressions.loc[clicks["request_id"]]
    examples = [_example(click, shown, item_rows, problems) for click, shown in
                zip(clicks.itertuples(index=False), served.itertuples(index=False))]
    if problems:
        raise ValueError(f"{len(problems)} log lines cannot be trained on (fix or move them; the log was not "
                         "changed):\n  " + "\n  ".join(problems[:_SHOWN]) +
                         (f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""))
    if not examples:
        raise ValueError(f"{folder} holds no clicks (feedback with reward > 0) to train on.")
    profiles, histories, items, picks, above, sizes = zip(*examples)
    return LoggedClicks(list(profiles), list(histories), np.asarray(items, dtype=np.int64),
                        np.asarray(picks, dtype=np.float64), list(above), np.asarray(sizes, dtype=np.int64))


def _example(click, shown, item_rows: dict[str, int], problems: list[str]) -> tuple | None:
    """(profile, history rows, clicked row, pick probability, rows above, slate size), or None with the problem
    noted."""
    missing = [i for i in [*shown.history_ids, *shown.slate, click.item_id] if i not in item_rows]
    if missing:
        problems.append(f"{shown.source}: item {missing[0]!r} is not in the training catalog")
        return None
    if click.item_id not in shown.slate:
        problems.append(f"{click.source}: item {click.item_id!r} was not in the slate of request {click.request_id!r}")
        return None
    position = shown.slate.index(click.item_id)
    history, above = (np.asarray([item_rows[i] for i in ids], dtype=np.int64)
                      for ids in (shown.history_ids, shown.slate[:position]))
    return (shown.user_text or "", history, item_rows[click.item_id], shown.pick_probabilities[position], above,
            len(shown.slate))
