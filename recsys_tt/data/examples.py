"""Training examples and padding of ragged rows.

Every position t of a user's training sequence is a target (its history: the items before t), so one epoch
sees every transition. Text users take one target per example, (user, t). Item-vector users take a window
of up to L consecutive targets per example, (user, start, end): the causal user tower reads items
start..end-1 once and predicts each next item, items start+1..end.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def training_examples(train: Sequence[np.ndarray], min_history: int) -> np.ndarray:
    """(E, 2) array of (user, position) for every position with at least ``min_history`` items before it."""
    pairs = [(u, t) for u, seq in enumerate(train) for t in range(min_history, len(seq))]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def training_windows(train: Sequence[np.ndarray], length: int, min_history: int) -> np.ndarray:
    """(E, 3) array of (user, start, end): inputs train[u][max(start, 0):end], targets train[u][start+1:end+1].

    Windows tile each sequence's targets from its end backwards, so every target appears exactly once and
    the most recent window is always full. With ``min_history`` 0 a user's oldest window starts at -1: its
    first target, item 0, is predicted from the profile alone.
    """
    windows = []
    for u, seq in enumerate(train):
        last = len(seq) - 1
        while last >= min_history:
            first = max(min_history, last - length + 1)
            windows.append((u, first - 1, last))
            last = first - 1
    return np.asarray(windows, dtype=np.int64).reshape(-1, 3)


def pad_rows(rows: Sequence[np.ndarray], fill: int = -1) -> torch.Tensor:
    """Ragged int rows -> (B, max_len) tensor right-padded with ``fill``."""
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), max(width, 1)), fill, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out)
