"""What each user was shown and did not click, so that a server stops re-serving what a user keeps ignoring.

Users are known by their dataset ``user_id`` or, for a new user, the ``user_key`` their requests carry. The memory
holds the most recently served users, as many as ``serving.cache_size`` (a user's counts cost about 100 bytes per
distinct item shown); a restarted server reads it back from the last ``serving.feedback_window`` slates of its log
(a click there clears the item's count, whichever slates came after it).
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict

import numpy as np


class IgnoredItems:
    """Per user, how many slates showed each item without a click; items at ``limit`` are excluded for them."""

    def __init__(self, limit: int, users: int) -> None:
        self.limit, self.users = limit, users
        self._shown: OrderedDict[str, Counter] = OrderedDict()
        self._lock = threading.Lock()

    def excluded(self, key: str | None) -> np.ndarray:
        """Rows this user ignored ``limit`` times (empty without a key or a limit)."""
        if key is None or not self.limit:
            return np.zeros(0, dtype=np.int64)
        with self._lock:
            counts = self._shown.get(key, {})
            return np.asarray([row for row, times in counts.items() if times >= self.limit], dtype=np.int64)

    def shown(self, key: str | None, rows: np.ndarray) -> None:
        """Counts a slate of ``rows`` shown to this user (counts drop when feedback says an item was clicked)."""
        if key is None or not self.limit:
            return
        with self._lock:
            self._shown.setdefault(key, Counter()).update(rows.tolist())
            self._shown.move_to_end(key)
            while len(self._shown) > self.users:
                self._shown.popitem(last=False)

    def clicked(self, key: str | None, row: int) -> None:
        """A click on ``row``: it was not ignored, whatever slates showed it before."""
        if key is None:
            return
        with self._lock:
            if key in self._shown:
                self._shown[key].pop(row, None)
