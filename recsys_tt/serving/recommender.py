"""The Python serving API: an export folder -> recommendations with logged exploration.

Pipeline of one request: user (dataset id with its full history, or new-user text and/or recent items) ->
user vector (LRU-cached, ``user_vectors``) -> FAISS top-N without seen/excluded items -> exact rescoring with the
stored vectors -> optional second-stage scorer -> MMR -> Plackett-Luce exploration -> response, and one line in the
propensity log. The request contract is ``requests``.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import secrets
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from recsys_tt.data.propensity_log import Feedback, Impression, PropensityLog, latest_feedback, recent_slates
from recsys_tt.export.folder import ExportFolder
from recsys_tt.serving.explore import explore
from recsys_tt.serving.ignored import IgnoredItems
from recsys_tt.serving.requests import (
    MAX_SEED,
    BadRequestError,
    ConflictError,
    LogUnavailableError,
    RecommendRequest,
    ServingConfig,
    UnknownItemsError,
    UnknownRequestError,
    UnknownUserError,
    check_request,
)
from recsys_tt.serving.rerank import CandidateScorer, exact_scores, mmr
from recsys_tt.serving.retrieval import search_excluding
from recsys_tt.serving.uncertainty import ItemUncertainty, observed_interactions
from recsys_tt.serving.user_vectors import BATCH_SIZE, Lru, UserVectors


class _ServedSlate(NamedTuple):
    """What /feedback checks a click against: a few hundred bytes, whatever the item ids' length."""

    rows: np.ndarray  # int32 rows the slate showed
    key: str | None  # whom the ignore memory counts it for


def _digest(text: str, history: np.ndarray) -> bytes:
    """A new user's cache key: 16 bytes whatever the text's length, so a cache entry's size is the vector's."""
    digest = hashlib.blake2b(text.encode(), digest_size=16)
    digest.update(np.asarray(history, dtype=np.int64).tobytes())
    return digest.digest()


@dataclass
class User:
    """A request's user as the recommender resolved it."""

    cache_key: tuple
    user_id: str | None
    history: np.ndarray  # item rows, oldest first (excluded from results)
    text: str
    unknown_items: list[str]


class Recommender:
    """Recommends from an export folder; thread-safe, so one instance serves every request."""

    def __init__(self, export: ExportFolder, config: ServingConfig | None = None,
                 scorer: CandidateScorer | None = None, log: PropensityLog | None = None) -> None:
        self.export, self.config = export, config or ServingConfig()
        self.scorer, self.log = scorer, log
        self.log_error: str | None = None  # why the last log write failed, until one succeeds
        self.user_vectors = UserVectors(self.encode_users, self.config.cache_size)
        self._served = Lru(self.config.feedback_window)  # request id -> _ServedSlate
        exploration = self.config.exploration
        self.uncertainty = ItemUncertainty(observed_interactions(export.items), exploration.bonus_pseudo_count,
                                           exploration.impression_weight)
        self.ignored = IgnoredItems(self.config.ignore_limit, self.config.cache_size)
        if log is not None:
            self._remember(log.folder)
        self._encode_lock = threading.Lock()  # one forward pass at a time; torch uses all cores for each
        self._user_rows, self._item_ids = export.user_rows, export.item_ids
        self._names = export.items["history_name"].astype(str).to_numpy()
        self._texts = export.items["text"].astype(str).to_numpy()
        self._profiles = export.users["profile"].astype(str).tolist()
        meta = export.meta
        self.model_version = meta["model_version"]
        self.index_version = f"{meta['factory']}|{meta['num_items']} items|{meta['created_at']}"

    def _remember(self, folder: Path) -> None:
        """Reads back the last ``feedback_window`` slates of the log: a restart must not lose the clicks on slates
        served just before it, the impressions that made items less uncertain, or what each user ignored."""
        rows = self.export.item_rows
        slates = recent_slates(folder, self.config.feedback_window)
        for request_id, slate, key in slates:
            shown = np.asarray([rows[i] for i in slate if i in rows], dtype=np.int64)
            self._served.put(request_id, _ServedSlate(shown.astype(np.int32), key))
            self.ignored.shown(key, shown)
        self.uncertainty.observe(rows[i] for _, slate, _ in slates for i in slate if i in rows)  # one update
        if self.config.ignore_limit and slates:
            keys = {request_id: key for request_id, _, key in slates}
            clicks = latest_feedback(folder)
            clicks = clicks[(clicks["reward"] > 0) & clicks["request_id"].isin(keys)]
            for request_id, item in clicks[["request_id", "item_id"]].itertuples(index=False):
                if item in rows:
                    self.ignored.clicked(keys[request_id], rows[item])

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
        check_request(request, self.config, len(self._item_ids))
        user = self.user(request)
        vector = self.user_vectors.get(user)
        excluded_rows, unknown_excluded = self._rows(request.exclude)
        key = request.memory_key
        excluded = np.unique(np.concatenate([user.history, excluded_rows, self.ignored.excluded(key)]))
        rows, scores = self._candidates(vector, excluded.astype(np.int64), request.k)
        exploration = self.config.exploration
        temperature = exploration.user_temperature(len(user.history), request.temperature)
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED)
        uncertainty = self.uncertainty(rows) if exploration.bonus else None
        slate = explore(scores, request.k, exploration, temperature, np.random.default_rng(seed), uncertainty)
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
            record = self._log_record(response, user, rows, scores, uncertainty, slate, shown, request.user_key)
            self._write_log(self.log.log_slate, record)
            self._served.put(response["request_id"], _ServedSlate(shown.astype(np.int32), key))
        self.uncertainty.observe(shown)
        self.ignored.shown(key, shown)
        return response

    def warm_cache(self, requests: list[RecommendRequest], batch_size: int = BATCH_SIZE) -> None:
        """Encodes the users of many requests in batches and caches their vectors (e.g. before a traffic peak)."""
        self.user_vectors.warm([self.user(r) for r in requests], batch_size)

    def feedback(self, request_id: str, item_id: str, reward: float) -> None:
        """Attaches a reward (e.g. 1 for a click) to an item of a logged slate."""
        if self.log is None:
            raise ConflictError("This recommender keeps no propensity log; start it with a log folder.")
        limit = self.config.max_abs_reward
        if not (math.isfinite(reward) and abs(reward) <= limit):
            raise BadRequestError(f"reward must be a finite number in [-{limit:g}, {limit:g}], got {reward}.")
        served = self._served.get(request_id)
        if served is None:
            raise UnknownRequestError(f"request_id {request_id!r} was not served by this recommender (or is older "
                                      f"than its last {self.config.feedback_window} slates).")
        row = self.export.item_rows.get(str(item_id))
        if row is None or row not in served.rows:
            raise ConflictError(f"item_id {item_id!r} was not in the slate of request {request_id!r}.")
        self._write_log(self.log.log_feedback, Feedback(request_id, str(item_id), float(reward), _now()))
        if reward > 0:
            self.ignored.clicked(served.key, row)

    def _write_log(self, write, record) -> None:
        """Writes a log record, or refuses the request: a slate that cannot be logged is not served, since off-policy
        evaluation and retraining need every one. ``log_error`` says why until a write succeeds again."""
        try:
            write(record)
        except OSError as err:
            self.log_error = f"{type(err).__name__}: {err}"
            raise LogUnavailableError(f"The propensity log in {self.log.folder} cannot be written ({self.log_error}); "
                                      "nothing was served. Free space there (or fix its permissions).") from err
        self.log_error = None

    # ----- steps ----------------------------------------------------------------------------------------
    def _rows(self, item_ids: list[str]) -> tuple[np.ndarray, list[str]]:
        rows = self.export.item_rows
        known = [rows[str(i)] for i in item_ids if str(i) in rows]
        return np.asarray(known, dtype=np.int64), [str(i) for i in item_ids if str(i) not in rows]

    def user(self, request: RecommendRequest) -> User:
        """Who a request is for: a known user with their whole history, or a new one from text and recent items."""
        if request.user_id is not None:
            index = self._user_rows.get(str(request.user_id))
            if index is None:
                raise UnknownUserError(f"Unknown user_id {request.user_id!r}; new users are given by text and/or "
                                       "recent_item_ids.")
            history = self.export.split.history(index, "all")
            return User(("id", index), str(request.user_id), history, self._profiles[index], [])
        history, unknown = self._rows(request.recent_item_ids)
        if not len(history) and not (request.text or "").strip():
            raise UnknownItemsError(f"None of the recent_item_ids are in the catalog ({unknown[:5]}) and there is "
                                    "no text.")
        text = request.text or ""
        return User(("new", _digest(text, history)), None, history, text, unknown)

    def encode_users(self, users: list[User], batch_size: int = BATCH_SIZE) -> list[np.ndarray]:
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
        exploration = self.config.exploration
        if exploration.bonus and exploration.bonus_candidates:
            extra = self._most_promising(vector, excluded, exploration.bonus, exploration.bonus_candidates)
            rows = np.concatenate([rows, extra[~np.isin(extra, rows)]])
        if not len(rows):
            raise ConflictError("Every item is excluded for this user; nothing is left to recommend.")
        scores = exact_scores(vector, self.export.vectors, rows)
        if self.scorer is not None:
            scores = np.asarray(self.scorer(vector, rows, scores), dtype=np.float64)
        order, final = mmr(scores, self.export.vectors[rows], self.config.diversity_lambda)
        return rows[order], np.asarray(final, dtype=np.float64)

    def _most_promising(self, vector: np.ndarray, excluded: np.ndarray, bonus: float, count: int) -> np.ndarray:
        """The ``count`` rows with the best upper confidence bound, score + bonus x uncertainty, over the catalog."""
        bound = self.export.vectors @ vector + bonus * self.uncertainty(np.arange(len(self._item_ids)))
        bound[excluded] = -np.inf
        count = min(count, int(np.isfinite(bound).sum()))
        return np.argpartition(-bound, count - 1)[:count] if count else np.zeros(0, dtype=np.int64)

    def _explain(self, rows: np.ndarray, user: User) -> list[str]:
        """For each shown row, the history item closest to it ("Because you liked ...")."""
        if not len(user.history):
            return ["Matches your description."] * len(rows)
        vectors = self.export.vectors
        closest = user.history[np.argmax(vectors[user.history] @ vectors[rows].T, axis=0)]
        return [f"Because you liked {self._names[c]}." for c in closest]

    def _log_record(self, response: dict, user: User, rows: np.ndarray, scores: np.ndarray,
                    uncertainty: np.ndarray | None, slate, shown: np.ndarray, user_key: str | None) -> Impression:
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
            user_text=user.text, history_ids=self._item_ids[user.history].tolist(), bonus=exploration.bonus,
            candidate_uncertainty=None if uncertainty is None else [round(float(u), 6) for u in uncertainty],
            user_key=user_key, catalog_size=len(self._item_ids))

def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()
