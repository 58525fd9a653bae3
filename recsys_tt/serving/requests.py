"""The serving contract: limits and settings, the request, its checks, and the errors a request can meet."""

from __future__ import annotations

from dataclasses import dataclass, field

from recsys_tt.data.propensity_log import memory_key
from recsys_tt.serving.explore import ExplorationConfig, temperature_problem

MAX_KEY_CHARS = 256  # of a user_id or user_key
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


class LogUnavailableError(RuntimeError):
    """The propensity log cannot be written (a full disk, say): nothing is served unlogged (HTTP 503)."""


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
    a restarted server reads them back from its log folder). Each costs about 0.5 KB + 4 bytes per item shown,
    whatever the request's size: 100,000 slates of 10 about 55 MB."""
    log_file_bytes: int = 64 * 2**20
    """Propensity log files rotate at this size."""
    log_max_files: int | None = 1000
    """Impression files kept; beyond it the oldest are deleted with the feedback files begun before the next one, so
    a click outlives its slate only when it came after the slate's file was closed. None keeps every file."""
    cache_size: int = 100_000
    """User vectors kept in the LRU cache (and users whose ignored items are remembered). Each costs the vector
    (4 bytes x dimension) + about 0.5 KB, whatever the user's text: 100,000 MiniLM users about 200 MB."""
    ignore_limit: int = 0
    """An item shown to a user this many times without a click is not shown to them again (0: no limit). Users are
    known by user_id, or a new user by the user_key of their requests."""
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    """How slates explore beyond the best-scored candidates, with logged propensities."""
    max_connections: int = 1000
    """Open connections the HTTP server holds; beyond them new requests get 503 at once. uvicorn has no timeout for
    a request's headers, so clients that connect and never finish a request are held until they leave: this caps
    them, and a reverse proxy with header and body timeouts in front (README) drops them."""
    keep_alive_seconds: int = 5
    """An idle keep-alive connection is closed after this long."""

    def __post_init__(self) -> None:
        for name in ("candidates", "max_k", "max_text_chars", "max_recent_items", "max_exclude", "max_body_bytes",
                     "max_abs_reward", "feedback_window", "log_file_bytes", "cache_size", "max_connections",
                     "keep_alive_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"serving.{name} must be positive, got {getattr(self, name)}.")
        if self.ignore_limit < 0:
            raise ValueError(f"serving.ignore_limit must be >= 0 (0: no limit), got {self.ignore_limit}.")
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
    user_key: str | None = None  # a new user's stable key across requests (what they ignored is remembered by it)

    @property
    def memory_key(self) -> str | None:
        """Whom the server remembers this request's slate for: a known user's id or a new user's key."""
        return memory_key(self.user_id, self.user_key)


def check_request(request: RecommendRequest, config: ServingConfig, catalog: int) -> None:
    """Refuses a request outside the limits, or one naming both a known and a new user, with every problem found."""
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
    if request.user_id is not None and request.user_key is not None:
        problems.append("user_key names a new user across requests; a known user is named by user_id alone")
    if request.user_key is not None and not 1 <= len(request.user_key) <= MAX_KEY_CHARS:
        problems.append(f"user_key must have 1 to {MAX_KEY_CHARS} characters")
    if problems:
        raise BadRequestError("; ".join(problems) + ".")
