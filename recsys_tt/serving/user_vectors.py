"""User vectors for serving: an LRU cache, and one encoder thread that batches the cache misses of concurrent
requests (one forward pass for many users; concurrent misses for one user share one encode). It knows nothing of
models: it calls the ``encode`` it is given."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

import numpy as np


class CachedUser(Protocol):
    cache_key: Hashable


class Lru:
    """A thread-safe least-recently-used map with hit/miss counts (user vectors; served slates)."""

    def __init__(self, size: int) -> None:
        self.size, self.hits, self.misses = size, 0, 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


BATCH_SIZE = 256  # users per forward pass when a batch of misses or a warm-up is larger
Encode = Callable[[Sequence[CachedUser], int], list[np.ndarray]]


class UserVectors:
    """``get(user)``: the cached vector, else the encoder thread's. ``encode(users, batch_size)`` returns the vectors
    of users in the order given; it runs in the encoder thread (and in ``warm``)."""

    def __init__(self, encode: Encode, cache_size: int) -> None:
        self.encode, self.cache = encode, Lru(cache_size)
        self._pending: dict[Hashable, Future] = {}  # users queued or being encoded -> their vector when done
        self._queued: list[CachedUser] = []  # misses waiting for the encoder thread's next batch
        self._misses = threading.Condition()  # guards both, and wakes the encoder thread
        self._thread: threading.Thread | None = None  # started on the first miss

    @property
    def waiting(self) -> int:
        """Users queued or being encoded (0 once every request has its vector)."""
        with self._misses:
            return len(self._pending) + len(self._queued)

    def get(self, user: CachedUser) -> np.ndarray:
        """The user's vector: misses that arrive while a batch encodes go together into the next batch."""
        vector = self.cache.get(user.cache_key)
        if vector is not None:
            return vector
        with self._misses:
            pending = self._pending.get(user.cache_key)
            if pending is None:
                pending = self._pending[user.cache_key] = Future()
                self._queued.append(user)
                self._misses.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._encode_misses, daemon=True, name="user-encoder")
                self._thread.start()
        return pending.result()

    def warm(self, users: Sequence[CachedUser], batch_size: int = BATCH_SIZE) -> None:
        """Encodes many users in batches of ``batch_size`` and caches their vectors (e.g. before a traffic peak)."""
        for user, vector in zip(users, self.encode(users, batch_size)):
            self.cache.put(user.cache_key, vector)

    def _encode_misses(self) -> None:
        """The encoder thread: encodes every queued miss in one batch, again and again."""
        while True:  # no local names: nothing of a request (its text) is held while the next batch may be hours away
            self._answer(self._next_batch())

    def _next_batch(self) -> list[CachedUser]:
        with self._misses:
            while not self._queued:
                self._misses.wait()
            users, self._queued = self._queued, []
        return users

    def _answer(self, users: list[CachedUser]) -> None:
        """Each waiting request gets its vector, or the batch's error, from its future."""
        try:
            vectors, error = self.encode(users, BATCH_SIZE), None
        except Exception as failure:  # noqa: BLE001 (handed to every request of the batch)
            vectors, error = None, failure
        with self._misses:
            for i, user in enumerate(users):
                future = self._pending.pop(user.cache_key)
                if error is not None:
                    future.set_exception(error)
                else:
                    self.cache.put(user.cache_key, vectors[i])
                    future.set_result(vectors[i])
