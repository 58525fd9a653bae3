"""Held-out splits of an interaction table for the cold-start and simulation evaluations (beyond leave-one-out).

Both keep the input's columns and row order, so each part can be trained on with ``--data.dataset files``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_tt.data.tables import parse_timestamps


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}.")


def split_by_time(frame: pd.DataFrame, source: str, fraction: float = 0.5,
                  min_past: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(past, future): per user, the first ``fraction`` of the interactions by time (at least ``min_past``; ties
    keep file order) and the rest. ``source`` names the file in timestamp errors."""
    _check_fraction(fraction)
    frame = frame.reset_index(drop=True)
    order = pd.DataFrame({"user_id": frame["user_id"], "_time": parse_timestamps(frame["timestamp"], source),
                          "_order": np.arange(len(frame))}).sort_values(["user_id", "_time", "_order"], kind="stable")
    position = order.groupby("user_id").cumcount()
    size = order.groupby("user_id")["_order"].transform("size")
    past = np.zeros(len(frame), dtype=bool)
    past[order["_order"].to_numpy()] = (position < (size * fraction).astype(int).clip(lower=min_past)).to_numpy()
    return frame[past], frame[~past]


def split_new_users(frame: pd.DataFrame, fraction: float = 0.2,
                    seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """(past, new users' interactions, held-out user ids): a random ``fraction`` of users held out entirely."""
    _check_fraction(fraction)
    user_ids = frame["user_id"].astype(str)
    users = np.sort(user_ids.unique())
    held_out = np.random.default_rng(seed).choice(users, max(1, round(fraction * len(users))), replace=False)
    new = user_ids.isin(set(held_out)).to_numpy()
    return frame[~new], frame[new], held_out
