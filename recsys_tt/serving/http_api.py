"""The HTTP API (FastAPI) over a Recommender: /recommend, /feedback, /health, /metrics, OpenAPI docs at /docs.

The OpenAPI document states every limit a well-formed request must keep (from the server's ServingConfig and
catalog), so a request that fits the document is answered 200, or 404 when an id it names is not held here, or 409
when the server's state cannot answer it (no log, an item the slate did not show).
"""

# No `from __future__ import annotations`: FastAPI reads the body types of the endpoints, which are built per server.
import time
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict

from recsys_tt.serving.explore import MAX_TEMPERATURE, MIN_TEMPERATURE
from recsys_tt.serving.recommender import Recommender
from recsys_tt.serving.requests import (
    MAX_KEY_CHARS,
    MAX_SEED,
    BadRequestError,
    ConflictError,
    LogUnavailableError,
    NotFoundError,
    RecommendRequest,
    ServingConfig,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


def _unicode(value: str) -> str:
    """Valid JSON may still hold text no tokenizer or log can take: a lone UTF-16 surrogate such as \\ud800."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"holds an unpaired surrogate at character {err.start}; send valid Unicode text") from err
    return value


def _json_integer(value: object) -> object:
    """JSON Schema counts 5.0 as an integer and true as none; pydantic's strict int refuses 5.0, lax int takes true."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Text = Annotated[str, AfterValidator(_unicode)]


def _integer(**bounds: int) -> object:
    """A JSON integer; bounds go inside the converter so that the document states them as JSON Schema keywords."""
    return Annotated[int, Strict(), Field(**bounds), BeforeValidator(_json_integer)]


Integer = _integer()
Seed = _integer(ge=0, lt=MAX_SEED)
Number = Annotated[float, Strict()]  # (strict floats still take JSON integers)


class ErrorBody(BaseModel):
    """Every refused request: what was wrong and what to change."""

    detail: str


class SlateItem(BaseModel):
    item_id: str
    text: str
    score: float = Field(description="The model's score (cosine similarity, after the scorer and MMR).")
    rank: int = Field(ge=1)
    propensity: float | None = Field(description="P(this item at this position) under the policy, estimated; "
                                     "null when serving.exploration.propensity_samples is 0.")
    pick_probability: float = Field(ge=0, le=1, description="P(this pick | the picks above it), exact.")
    explanation: str


class RecommendResponse(BaseModel):
    """A served slate. Sampled below the greedy head (``temperature`` > 0), so a lower rank may score higher."""

    request_id: str
    user_id: str | None
    temperature: float
    seed: int
    slate_probability: float
    model_version: str
    index_version: str
    items: list[SlateItem]
    unknown_item_ids: list[str] | None = Field(None, description="Ids the request named that the catalog lacks.")
    short_slate: str | None = Field(None, description="Why fewer than k items came back.")


class FeedbackResponse(BaseModel):
    status: str


class HealthResponse(BaseModel):
    status: str
    items: int
    users: int
    model_version: str
    index_version: str
    logging: bool
    log_error: str | None


_ERRORS = {400: {"model": ErrorBody, "description": "The body is not valid JSON."},
           413: {"model": ErrorBody, "description": "The body is larger than serving.max_body_bytes."},
           422: {"model": ErrorBody, "description": "The body is malformed or asks for what cannot be served."},
           503: {"model": ErrorBody, "description": "The propensity log cannot be written (e.g. a full disk); "
                 "nothing was served or recorded."}}


class _MetricsText(PlainTextResponse):
    media_type = CONTENT_TYPE_LATEST


class _BodyLimit:
    """ASGI middleware refusing bodies over ``limit`` bytes (413) before anything parses them."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            response = JSONResponse(status_code=413, content={"detail": self._message()})
            return await response(scope, receive, send)
        received = 0

        async def counted():  # a chunked body declares no length: count it as it arrives
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(status_code=413, detail=self._message())
            return message

        return await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"The request body is over {self.limit} bytes (serving.max_body_bytes)."


# A character Python's str.strip keeps: JSON Schema's \S alone would count U+001C-U+001F and U+0085 as text.
_NOT_BLANK = r"[^\s\u001c-\u001f\u0085]"


def _user_rule() -> dict:
    """JSON schema of "a known user by user_id, or a new user by a non-blank text and/or recent items"."""
    known = {"required": ["user_id"], "properties": {"user_id": {"type": "string"}, "text": {"type": "null"},
                                                      "recent_item_ids": {"maxItems": 0}, "user_key": {"type": "null"}}}
    described = [{"required": ["text"], "properties": {"text": {"type": "string", "pattern": _NOT_BLANK}}},
                 {"required": ["recent_item_ids"], "properties": {"recent_item_ids": {"minItems": 1}}}]
    return {"anyOf": [known, {"properties": {"user_id": {"type": "null"}}, "anyOf": described}]}


def request_bodies(config: ServingConfig, catalog_size: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """The /recommend and /feedback bodies, their documents stating this server's limits.

    The limits are documented here and checked by the Recommender (one check for the HTTP and the Python API).
    """

    largest_k = min(config.max_k, catalog_size)

    class RecommendBody(BaseModel):
        """A known user by ``user_id``, or a new user by ``text`` and/or ``recent_item_ids`` (oldest first)."""

        model_config = ConfigDict(extra="forbid", json_schema_extra=_user_rule())
        user_id: Text | None = Field(None, max_length=MAX_KEY_CHARS, coerce_numbers_to_str=True)
        text: Text | None = Field(None, json_schema_extra={"maxLength": config.max_text_chars})
        recent_item_ids: list[Text] = Field(default_factory=list,
                                            json_schema_extra={"maxItems": config.max_recent_items})
        k: Integer = Field(min(10, largest_k), description="Slate size.",
                           json_schema_extra={"minimum": 1, "maximum": largest_k})
        temperature: Number | None = Field(None, allow_inf_nan=False, description="Overrides the exploration "
                                           "temperature; 0 = greedy.", json_schema_extra={"anyOf": [
                                               {"type": "number", "const": 0},
                                               {"type": "number", "minimum": MIN_TEMPERATURE,
                                                "maximum": MAX_TEMPERATURE}, {"type": "null"}]})
        seed: Seed | None = Field(None, description="Reproduces a slate exactly.")
        exclude: list[Text] = Field(default_factory=list, description="Item ids never to show.",
                                    json_schema_extra={"maxItems": config.max_exclude})
        user_key: Text | None = Field(None, min_length=1, max_length=MAX_KEY_CHARS, coerce_numbers_to_str=True,
                                      description="A new user's stable key across requests: what they were shown "
                                      "and ignored is remembered by it (serving.ignore_limit).")

    class FeedbackBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        request_id: Text = Field(max_length=64)
        item_id: Text = Field(max_length=256, coerce_numbers_to_str=True)
        reward: Number = Field(1.0, allow_inf_nan=False, json_schema_extra={
            "minimum": -config.max_abs_reward, "maximum": config.max_abs_reward})

    return RecommendBody, FeedbackBody


class _Metrics:
    def __init__(self, recommender: Recommender) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("recsys_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("recsys_request_seconds", "Request latency", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("recsys_errors", "Requests that failed on the server (5xx)", registry=self.registry)
        cache = recommender.user_vectors.cache
        Gauge("recsys_user_cache_hits", "User-vector cache hits", registry=self.registry).set_function(
            lambda: cache.hits)
        Gauge("recsys_user_cache_misses", "User-vector cache misses", registry=self.registry).set_function(
            lambda: cache.misses)


def _route(request: Request) -> str:
    """The matched route's template (``/recommend``), or one label for every path no route serves: labelling by the
    raw path would let each unknown URL add a series to /metrics, without bound."""
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched"


# How a client (or a stateful fuzzer) goes from a served slate to its feedback: OpenAPI links.
_FEEDBACK_LINK = {"Feedback": {
    "operationId": "feedback", "description": "A click on the slate's first item.",
    "requestBody": {"request_id": "$response.body#/request_id", "item_id": "$response.body#/items/0/item_id",
                    "reward": 1}}}


def create_app(recommender: Recommender) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if recommender.log is not None:
            recommender.log.close()

    app = FastAPI(title="recsys_tt", description="Two-tower retrieval, reranking and logged exploration.",
                  lifespan=lifespan)
    metrics = _Metrics(recommender)
    app.add_middleware(_BodyLimit, limit=recommender.config.max_body_bytes)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:
            metrics.errors.inc()
            raise
        route = _route(request)
        metrics.latency.labels(route).observe(time.perf_counter() - started)
        metrics.requests.labels(route, str(response.status_code)).inc()
        if response.status_code >= 500:
            metrics.errors.inc()
        return response

    @app.exception_handler(BadRequestError)
    async def bad_request(request: Request, err: BadRequestError) -> JSONResponse:
        return JSONResponse(status_code=409 if isinstance(err, ConflictError) else 422, content={"detail": str(err)})

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, err: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the input, which cannot be rendered when it holds NaN
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}" for e in err.errors())
        return JSONResponse(status_code=422, content={"detail": problems})

    @app.exception_handler(LogUnavailableError)
    async def log_unavailable(request: Request, err: LogUnavailableError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(err)})

    @app.exception_handler(NotFoundError)
    async def unknown(request: Request, err: NotFoundError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": err.args[0]})

    recommend_body, feedback_body = request_bodies(recommender.config, len(recommender.export.items))

    @app.post("/recommend", operation_id="recommend", response_model=RecommendResponse,
              response_model_exclude_unset=True, responses={
        **_ERRORS, 200: {"links": _FEEDBACK_LINK},
        404: {"model": ErrorBody, "description": "Unknown user_id, or none of a new user's recent_item_ids "
                         "(without text) known."},
        409: {"model": ErrorBody, "description": "Every item is excluded."}})
    def recommend(body: recommend_body) -> dict:
        """A slate of ``k`` items with scores, propensities and explanations; logged when a log folder is set."""
        return recommender.recommend(RecommendRequest(**body.model_dump()))

    @app.post("/feedback", operation_id="feedback", response_model=FeedbackResponse, responses={
        **_ERRORS, 404: {"model": ErrorBody, "description": "A request_id this server did not serve, or too long ago "
                         "to remember."},
        409: {"model": ErrorBody, "description": "The server keeps no log, or the item was not in that slate."}})
    def feedback(body: feedback_body) -> dict:
        """Attaches a reward (e.g. 1 = click) to an item of a served slate."""
        recommender.feedback(body.request_id, body.item_id, body.reward)
        return {"status": "recorded"}

    @app.get("/health", response_model=HealthResponse, responses={
        503: {"model": HealthResponse, "description": "The propensity log cannot be written: requests are refused "
              "until it can (log_error says why)."}})
    def health() -> JSONResponse:
        """Ready once the export is loaded and checked (the server does that before it listens), and while its
        propensity log can be written."""
        meta = recommender.export.meta
        body = {"status": "ok" if recommender.log_error is None else "log unavailable",
                "items": meta["num_items"], "users": meta["num_users"], "model_version": recommender.model_version,
                "index_version": recommender.index_version, "logging": recommender.log is not None,
                "log_error": recommender.log_error}
        return JSONResponse(status_code=200 if recommender.log_error is None else 503, content=body)

    @app.get("/metrics", response_class=_MetricsText)
    def prometheus_metrics() -> _MetricsText:
        """Prometheus text format: request counts, latency histogram, errors, user-cache hits and misses."""
        return _MetricsText(generate_latest(metrics.registry))

    return app
