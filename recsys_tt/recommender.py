"""The Python serving API: an export folder -> recommendations with logged exploration.

Pipeline of one request: user (dataset id with its full history, or new-user text and/or recent items) ->
user vector (LRU-cached) -> FAISS top-N without seen/excluded items -> exact rescoring with the stored vectors ->
optional second-stage scorer -> MMR -> Plackett-Luce exploration -> response, and one line in the propensity log.
"""

from __future__ import annotations

import datetime
import math
import secrets
import threading
import uuid
from collections import OrderedDict
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys_tt.explore import ExplorationConfig, explore, temperature_problem
from recsys_tt.export_folder import ExportFolder
from recsys_tt.propensity_log import Feedback, Impression, PropensityLog
from recsys_tt.rerank import CandidateScorer, exact_scores, mmr
from recsys_tt.retrieval import search_excluding

MAX_SEED = 2**53  # seeds are below it: integers a JSON client (JavaScript's numbers) keeps exactly


class NotFoundError(KeyError):
    """A request naming ids this recommender does not hold (HTTP 404)."""


class UnknownUserError(NotFoundError):
    """A user id the export does not hold."""


class UnknownItemsError(NotFoundError):
    """A new user given only by recent items, none of which the catalog holds."""


class UnknownRequestError(NotFoundError):
    """Feedback for a request id this recommender did not serve (or served too long ago to remember)."""


class BadRequestError(ValueError):
    """A request the recommender cannot serve as asked (the message says what to change; HTTP 422)."""


class ConflictError(BadRequestError):
    """A well-formed request that what the recommender holds cannot answer (HTTP 409): feedback without a log or
    for an item the slate did not show, or a request that excludes every item."""


@dataclass(frozen=True)
class ServingConfig:
    """Serving limits and the rerank/explore settings of every request (a request may override temperature)."""

    candidates: int = 200
    """FAISS top-N that reranking and exploration choose from."""
    diversity_lambda: float = 1.0
    """MMR trade-off: 1 = pure relevance, lower = more diverse slates."""
    max_k: int = 100
    """Largest slate a request may ask for."""
    max_text_chars: int = 5000
    """Longest profile text a request may send."""
    max_recent_items: int = 500
    """Most recent item ids a request may send."""
    max_exclude: int = 1000
    """Most item ids a request may exclude."""
    max_body_bytes: int = 1_000_000
    """Largest HTTP request body; longer ones are refused (413) before they are parsed."""
    max_abs_reward: float = 1e6
    """Feedback rewards must lie in [-max_abs_reward, max_abs_reward]: OPE averages them."""
    feedback_window: int = 100_000
    """Most recent slates whose request ids /feedback accepts (feedback for older or never-served ids is refused;
    a restarted server remembers none)."""
    log_file_bytes: int = 64 * 2**20
    """Propensity log files rotate at this size."""
    log_max_files: int | None = 1000
    """Impression (and feedback) files kept; beyond it the oldest are deleted. None keeps every file."""
    cache_size: int = 100_000
    """User vectors kept in the LRU cache."""
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    """How slates explore beyond the best-scored candidates, with logged propensities."""

    def __post_init__(self) -> None:
        for name in ("candidates", "max_k", "max_text_chars", "max_recent_items", "max_exclude", "max_body_bytes",
                     "max_abs_reward", "feedback_window", "log_file_bytes", "cache_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"serving.{name} must be positive, got {getattr(self, name)}.")
        if not 0 <= self.diversity_lambda <= 1:
            raise ValueError(f"serving.diversity_lambda must be in [0, 1], got {self.diversity_lambda}.")


@dataclass
class RecommendRequest:
    """A known user (``user_id``) or a new one (``text`` and/or ``recent_item_ids``, oldest first)."""

    user_id: str | None = None
    text: str | None = None
    recent_item_ids: list[str] = field(default_factory=list)
    k: int = 10
    temperature: float | None = None
    seed: int | None = None
    exclude: list[str] = field(default_factory=list)


@dataclass
class _User:
    cache_key: tuple
    user_id: str | None
    history: np.ndarray  # item rows, oldest first (excluded from results)
    text: str
    unknown_items: list[str]


class _Lru:
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


class Recommender:
    """Recommends from an export folder; thread-safe, so one instance serves every request."""

    def __init__(self, export: ExportFolder, config: ServingConfig | None = None,
                 scorer: CandidateScorer | None = None, log: PropensityLog | None = None) -> None:
        self.export, self.config = export, config or ServingConfig()
        self.scorer, self.log = scorer, log
        self.cache = _Lru(self.config.cache_size)  # user vectors
        self._served = _Lru(self.config.feedback_window)  # request id -> the item ids its slate showed
        self._encode_lock = threading.Lock()  # one forward pass at a time; torch uses all cores for each
        self._pending: dict[Hashable, Future] = {}  # users queued or being encoded -> their vector when done
        self._queued: list[_User] = []  # cache misses waiting for the encoder thread's next batch
        self._misses = threading.Condition()  # guards both, and wakes the encoder thread
        self._encoder: threading.Thread | None = None  # started on the first miss
        self._user_rows, self._item_ids = export.user_rows, export.item_ids
        self._names = export.items["history_name"].astype(str).to_numpy()
        self._texts = export.items["text"].astype(str).to_numpy()
        self._profiles = export.users["profile"].astype(str).tolist()
        meta = export.meta
        self.model_version = meta["model_version"]
        self.index_version = f"{meta['factory']}|{meta['num_items']} items|{meta['created_at']}"

    @classmethod
    def load(cls, export_dir: str | Path, config: ServingConfig | None = None, scorer: CandidateScorer | None = None,
             log_dir: str | Path | None = None) -> Recommender:
        """Loads and checks an export folder and rebuilds its towers (refuses mismatched or incomplete folders)."""
        export = ExportFolder.load(export_dir)
        export.encoder, export.user_features  # noqa: B018 (build the towers and user inputs now, not on a request)
        config = config or ServingConfig()
        log = PropensityLog(log_dir, config.log_file_bytes, config.log_max_files) if log_dir else None
        return cls(export, config, scorer, log)

    # ----- requests -----------------------------------------------------------------------------------
    def recommend(self, request: RecommendRequest) -> dict:
        """Serves one slate; raises UnknownUserError for an unknown user id, BadRequestError for a bad request."""
        self._check(request)
        user = self._user(request)
        vector = self._vector(user)
        excluded_rows, unknown_excluded = self._rows(request.exclude)
        excluded = np.unique(np.concatenate([user.history, excluded_rows])).astype(np.int64)
        rows, scores = self._candidates(vector, excluded, request.k)
        exploration = self.config.exploration
        temperature = exploration.user_temperature(len(user.history), request.temperature)
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED)
        slate = explore(scores, request.k, exploration, temperature, np.random.default_rng(seed))
        shown = rows[slate.picks]
        response = {
            "request_id": uuid.uuid4().hex, "user_id": user.user_id, "temperature": temperature, "seed": seed,
            "slate_probability": slate.probability, "model_version": self.model_version,
            "index_version": self.index_version,
            "items": [{"item_id": self._item_ids[r], "text": self._texts[r], "score": float(scores[p]), "rank": rank,
                       "propensity": None if slate.position_propensity is None else
                       float(slate.position_propensity[rank - 1]),
                       "pick_probability": float(slate.pick_probability[rank - 1]), "explanation": why}
                      for rank, (r, p, why) in enumerate(zip(shown, slate.picks, self._explain(shown, user)), start=1)],
        }
        unknown = user.unknown_items + unknown_excluded
        if unknown:
            response["unknown_item_ids"] = unknown
        if len(shown) < request.k:  # a client paging by k must not mistake this for a full slate
            response["short_slate"] = (f"{len(shown)} of the {request.k} items asked for: every other item is "
                                       "excluded or in the user's history.")
        if self.log is not None:
            self.log.log_slate(self._log_record(response, user, rows, scores, slate, shown))
            self._served.put(response["request_id"], frozenset(self._item_ids[shown].tolist()))
        return response

    def warm_cache(self, requests: list[RecommendRequest], batch_size: int = 256) -> None:
        """Encodes the users of many requests in batches and caches their vectors (e.g. before a traffic peak)."""
        users = [self._user(r) for r in requests]
        for user, vector in zip(users, self._encode(users, batch_size)):
            self.cache.put(user.cache_key, vector)

    def feedback(self, request_id: str, item_id: str, reward: float) -> None:
        """Attaches a reward (e.g. 1 for a click) to an item of a logged slate."""
        if self.log is None:
            raise ConflictError("This recommender keeps no propensity log; start it with a log folder.")
        limit = self.config.max_abs_reward
        if not (math.isfinite(reward) and abs(reward) <= limit):
            raise BadRequestError(f"reward must be a finite number in [-{limit:g}, {limit:g}], got {reward}.")
        shown = self._served.get(request_id)
        if shown is None:
            raise UnknownRequestError(f"request_id {request_id!r} was not served by this recommender (or is older "
                                      f"than its last {self.config.feedback_window} slates).")
        if str(item_id) not in shown:
            raise ConflictError(f"item_id {item_id!r} was not in the slate of request {request_id!r}.")
        self.log.log_feedback(Feedback(request_id, str(item_id), float(reward), _now()))

    # ----- steps ----------------------------------------------------------------------------------------
    def _check(self, request: RecommendRequest) -> None:
        config, catalog = self.config, len(self._item_ids)
        problems = []
        if not 1 <= request.k <= min(config.max_k, catalog):
            problems.append(f"k must be in 1..{min(config.max_k, catalog)}, got {request.k}")
        if request.temperature is not None and (problem := temperature_problem(request.temperature)):
            problems.append(problem)
        if request.text is not None and len(request.text) > config.max_text_chars:
            problems.append(f"text has {len(request.text)} characters; the limit is {config.max_text_chars}")
        if len(request.recent_item_ids) > config.max_recent_items:
            problems.append(f"{len(request.recent_item_ids)} recent items; the limit is {config.max_recent_items}")
        if len(request.exclude) > config.max_exclude:
            problems.append(f"{len(request.exclude)} excluded items; the limit is {config.max_exclude}")
        if request.user_id is None and not (request.text or "").strip() and not request.recent_item_ids:
            problems.append("give a user_id, or a text and/or recent_item_ids for a new user")
        if request.user_id is not None and (request.text is not None or request.recent_item_ids):
            problems.append("give either a user_id or a new user's text/recent_item_ids, not both")
        if problems:
            raise BadRequestError("; ".join(problems) + ".")

    def _rows(self, item_ids: list[str]) -> tuple[np.ndarray, list[str]]:
        rows = self.export.item_rows
        known = [rows[str(i)] for i in item_ids if str(i) in rows]
        return np.asarray(known, dtype=np.int64), [str(i) for i in item_ids if str(i) not in rows]

    def _user(self, request: RecommendRequest) -> _User:
        if request.user_id is not None:
            index = self._user_rows.get(str(request.user_id))
            if index is None:
                raise UnknownUserError(f"Unknown user_id {request.user_id!r}; new users are given by text and/or "
                                       "recent_item_ids.")
            history = self.export.split.history(index, "all")
            return _User(("id", index), str(request.user_id), history, self._profiles[index], [])
        history, unknown = self._rows(request.recent_item_ids)
        if not len(history) and not (request.text or "").strip():
            raise UnknownItemsError(f"None of the recent_item_ids are in the catalog ({unknown[:5]}) and there is "
                                    "no text.")
        text = request.text or ""
        return _User(("new", text, tuple(history.tolist())), None, history, text, unknown)

    def _vector(self, user: _User) -> np.ndarray:
        """The cached vector, else the encoder thread's: misses that arrive while it encodes a batch go together into
        its next batch (one forward pass for many users), and concurrent misses for one user share one encode."""
        vector = self.cache.get(user.cache_key)
        if vector is not None:
            return vector
        with self._misses:
            pending = self._pending.get(user.cache_key)
            if pending is None:
                pending = self._pending[user.cache_key] = Future()
                self._queued.append(user)
                self._misses.notify()
            if self._encoder is None:
                self._encoder = threading.Thread(target=self._encode_misses, daemon=True, name="user-encoder")
                self._encoder.start()
        return pending.result()

    def _encode_misses(self) -> None:
        """The encoder thread: encodes every queued miss in one batch, again and again; each waiting request gets its
        vector, or the batch's error, from its future."""
        while True:
            with self._misses:
                while not self._queued:
                    self._misses.wait()
                users, self._queued = self._queued, []
            try:
                vectors, error = self._encode(users), None
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

    def _encode(self, users: list[_User], batch_size: int = 256) -> list[np.ndarray]:
        """User vectors in the order given: dataset users with all their history, new users from text + items."""
        known = [i for i, u in enumerate(users) if u.user_id is not None]
        new = [i for i, u in enumerate(users) if u.user_id is None]
        out: list[np.ndarray] = [None] * len(users)
        with self._encode_lock:
            if known:
                indices = np.asarray([users[i].cache_key[1] for i in known])
                for i, vector in zip(known, self.export.user_vectors(indices, "all", batch_size)):
                    out[i] = vector
            if new:
                vectors = self.export.new_user_vectors([users[i].text for i in new], [users[i].history for i in new],
                                                       batch_size)
                for i, vector in zip(new, vectors):
                    out[i] = vector
        return out

    def _candidates(self, vector: np.ndarray, excluded: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidate rows and their final scores, best first (after rescoring, the scorer and MMR)."""
        depth = min(max(self.config.candidates, k), len(self._item_ids))
        rows, _ = search_excluding(self.export.index, vector[None, :], depth, [excluded])
        rows = rows[0][rows[0] >= 0]
        if not len(rows):
            raise ConflictError("Every item is excluded for this user; nothing is left to recommend.")
        scores = exact_scores(vector, self.export.vectors, rows)
        if self.scorer is not None:
            scores = np.asarray(self.scorer(vector, rows, scores), dtype=np.float64)
        order, final = mmr(scores, self.export.vectors[rows], self.config.diversity_lambda)
        return rows[order], np.asarray(final, dtype=np.float64)

    def _explain(self, rows: np.ndarray, user: _User) -> list[str]:
        """For each shown row, the history item closest to it ("Because you liked ...")."""
        if not len(user.history):
            return ["Matches your description."] * len(rows)
        vectors = self.export.vectors
        closest = user.history[np.argmax(vectors[user.history] @ vectors[rows].T, axis=0)]
        return [f"Because you liked {self._names[c]}." for c in closest]

    def _log_record(self, response: dict, user: _User, rows: np.ndarray, scores: np.ndarray, slate,
                    shown: np.ndarray) -> Impression:
        exploration = self.config.exploration
        return Impression(
            request_id=response["request_id"], time=_now(), user_id=user.user_id, new_user=user.user_id is None,
            history_length=int(len(user.history)), candidate_ids=self._item_ids[rows].tolist(),
            candidate_rows=rows.tolist(), candidate_scores=[round(float(s), 6) for s in scores],
            temperature=response["temperature"], head=exploration.head, epsilon=exploration.epsilon,
            diversity_lambda=self.config.diversity_lambda, k=len(shown), slate=self._item_ids[shown].tolist(),
            slate_rows=shown.tolist(), pick_probabilities=slate.pick_probability.tolist(),
            position_propensities=None if slate.position_propensity is None else slate.position_propensity.tolist(),
            slate_probability=slate.probability, propensity_samples=exploration.propensity_samples,
            seed=response["seed"], model_version=self.model_version, index_version=self.index_version,
            user_text=user.text, history_ids=self._item_ids[user.history].tolist())

def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()
