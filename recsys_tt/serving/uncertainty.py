"""How sure the model is of each item's score: the uncertainty that directed exploration (``ExplorationConfig.bonus``)
raises scores by.

Each item's vector has a Gaussian posterior centred on its exported vector: for a trained item the text vector plus
its id vector, for an item added from text alone (scripts/add_items.py) its text vector, which is then the prior
mean of everything the model says about it. With prior N(mean, s0^2 I) and each observation adding precision
1 / sn^2, the posterior variance is s0^2 / (1 + n / c) with c = sn^2 / s0^2 (``bonus_pseudo_count``), so the std of
a unit user's score is s0 / sqrt(1 + n / c). The bonus carries s0 (and the confidence level), so the uncertainty
here is 1 for an item never observed. n counts an item's training interactions and refreshed clicks
(``observed_interactions``) and ``impression_weight`` per slate that showed it since: shown and not clicked is
weaker evidence than a click.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np
import pandas as pd


def observed_interactions(items: pd.DataFrame) -> np.ndarray:
    """(N,) what an export's vectors learnt from per item: training interactions, and the logged clicks of a refresh
    (``recsys_tt.offline.item_refresh``) where there was one."""
    clicks = items["logged_clicks"].fillna(0) if "logged_clicks" in items else 0
    return (items["train_count"] + clicks).to_numpy(dtype=np.float64)


class ItemUncertainty:
    """Per-item score uncertainty that shrinks as the server shows items; thread-safe."""

    def __init__(self, interactions: np.ndarray, pseudo_count: float, impression_weight: float) -> None:
        self.interactions = np.asarray(interactions, dtype=np.float64)
        self.impressions = np.zeros(len(self.interactions))
        self.pseudo_count, self.impression_weight = pseudo_count, impression_weight
        self._lock = threading.Lock()

    def observe(self, rows: Iterable[int]) -> None:
        """Counts one impression of each row (a row twice in ``rows`` counts twice)."""
        rows = np.fromiter(rows, dtype=np.int64)
        with self._lock:
            np.add.at(self.impressions, rows, 1.0)

    def observations(self, rows: np.ndarray) -> np.ndarray:
        return self.interactions[rows] + self.impression_weight * self.impressions[rows]

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) uncertainty of each row's score, in units of the prior std (1 = never observed)."""
        return 1.0 / np.sqrt(1.0 + self.observations(rows) / self.pseudo_count)
