"""The Python and HTTP serving APIs on a tiny export: slates, propensity logs, feedback and bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from recsys_tt.data.propensity_log import (
    SCHEMA_VERSION,
    Feedback,
    Impression,
    PropensityLog,
    read_feedback,
    read_impressions,
)
from recsys_tt.export.folder import ExportFolder
from recsys_tt.offline.ope import bandit_feedback
from recsys_tt.serving.explore import MAX_TEMPERATURE, MIN_TEMPERATURE, ExplorationConfig
from recsys_tt.serving.http_api import create_app
from recsys_tt.serving.recommender import Recommender
from recsys_tt.serving.requests import (
    ConflictError,
    RecommendRequest,
    ServingConfig,
    UnknownItemsError,
    UnknownRequestError,
    UnknownUserError,
)
from recsys_tt.serving.retrieval import search_excluding
from tests.helpers import undocumented_options

EXPLORING = ServingConfig(exploration=ExplorationConfig(temperature=0.5, propensity_samples=200))


@pytest.fixture
def recommender(flat_export, tmp_path) -> Recommender:
    return Recommender.load(flat_export, EXPLORING, log_dir=tmp_path / "log")


def test_a_known_user_gets_unseen_items_with_propensities_and_explanations(recommender):
    export = recommender.export
    seen = set(export.items["item_id"].to_numpy()[export.split.history(0, "all")])
    response = recommender.recommend(RecommendRequest(user_id="u0", k=4, seed=3))
    items = response["items"]
    assert [i["rank"] for i in items] == [1, 2, 3, 4] and not seen & {i["item_id"] for i in items}
    assert all(0 < i["propensity"] <= 1 and 0 < i["pick_probability"] <= 1 for i in items)
    assert response["slate_probability"] == pytest.approx(np.prod([i["pick_probability"] for i in items]))
    history_names = set(export.items["history_name"])
    assert all(i["explanation"].removeprefix("Because you liked ").removesuffix(".") in history_names for i in items)
    again = recommender.recommend(RecommendRequest(user_id="u0", k=4, seed=3))
    assert [i["item_id"] for i in again["items"]] == [i["item_id"] for i in items]
    assert recommender.user_vectors.cache.hits >= 1


def test_greedy_slate_is_the_exact_top_k_without_seen_items(recommender):
    export = recommender.export
    response = recommender.recommend(RecommendRequest(user_id="u3", k=3, temperature=0.0))
    vector = export.user_vectors(np.array([3]), "all")
    rows, _ = search_excluding(export.index, vector, 3, [export.split.history(3, "all")])
    assert [i["item_id"] for i in response["items"]] == export.items["item_id"].to_numpy()[rows[0]].tolist()
    assert all(i["propensity"] == 1.0 for i in response["items"])
    scores = [i["score"] for i in response["items"]]
    assert scores == sorted(scores, reverse=True)


def test_concurrent_misses_for_one_user_encode_it_once(flat_export):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    plain = Recommender.load(flat_export, EXPLORING)
    encode, calls, lock = plain.user_vectors.encode, [], threading.Lock()

    def slow_encode(users, *args):
        with lock:
            calls.extend(u.cache_key for u in users)
        time.sleep(0.2)  # every other request arrives while this one encodes
        return encode(users, *args)

    plain.user_vectors.encode = slow_encode
    requests = [RecommendRequest(text="Likes westerns.", k=2, temperature=0.0)] * 6 + \
        [RecommendRequest(user_id="u1", k=2, temperature=0.0)] * 6
    with ThreadPoolExecutor(12) as pool:
        slates = list(pool.map(plain.recommend, requests))
    assert sorted(key[0] for key in calls) == ["id", "new"]  # one encode per user, not twelve
    assert len({tuple(i["item_id"] for i in s["items"]) for s in slates[:6]}) == 1
    assert plain.user_vectors.waiting == 0  # nothing left waiting


def test_a_slate_cut_short_by_exclusions_says_so(recommender):
    export = recommender.export
    unseen = np.setdiff1d(np.arange(len(export.items)), export.split.history(3, "all"))
    kept = export.items["item_id"].to_numpy()[unseen[:2]].tolist()
    excluded = [i for i in export.items["item_id"].to_numpy()[unseen].tolist() if i not in kept]
    response = recommender.recommend(RecommendRequest(user_id="u3", k=5, exclude=excluded))
    assert sorted(i["item_id"] for i in response["items"]) == sorted(kept)
    assert response["short_slate"].startswith("2 of the 5 items")
    assert "short_slate" not in recommender.recommend(RecommendRequest(user_id="u3", k=2))


def test_new_users_by_text_or_recent_items_and_exclusions(recommender):
    by_text = recommender.recommend(RecommendRequest(text="A 30 year old writer.", k=3, temperature=0.0))
    assert len(by_text["items"]) == 3 and by_text["user_id"] is None
    assert by_text["items"][0]["explanation"] == "Matches your description."
    recent = recommender.recommend(RecommendRequest(recent_item_ids=["i1", "i2", "nope"], k=3, exclude=["i5"]))
    shown = {i["item_id"] for i in recent["items"]}
    assert not shown & {"i1", "i2", "i5"} and recent["unknown_item_ids"] == ["nope"]


def test_warming_the_cache_gives_the_vectors_a_request_would_compute(recommender):
    requests = [RecommendRequest(user_id="u4"), RecommendRequest(text="A 22 year old nurse.", recent_item_ids=["i2"])]
    recommender.warm_cache(requests)
    cache = recommender.user_vectors.cache
    assert (cache.hits, cache.misses) == (0, 0)
    users = [recommender.user(r) for r in requests]
    cached = [cache.get(u.cache_key) for u in users]
    recommender.user_vectors.cache = type(cache)(10)  # empty: each vector is computed alone now
    for user, vector in zip(users, cached):
        assert np.allclose(vector, recommender.user_vectors.get(user), atol=1e-5)


def test_a_pluggable_scorer_reorders_candidates(flat_export):
    reverse = Recommender.load(flat_export, ServingConfig(exploration=ExplorationConfig(temperature=0.0)),
                               scorer=lambda user, rows, scores: -scores)
    plain = Recommender(reverse.export, reverse.config)
    first = reverse.recommend(RecommendRequest(user_id="u1", k=2))["items"][0]["item_id"]
    worst = plain.recommend(RecommendRequest(user_id="u1", k=len(plain.export.items) - 6))["items"][-1]["item_id"]
    assert first == worst


@pytest.mark.parametrize("request_fields, message", [
    ({"user_id": "u0", "k": 0}, "k must be in"), ({"user_id": "u0", "k": 50}, "k must be in"),
    ({"user_id": "u0", "temperature": -0.1}, "temperature"), ({"user_id": "u0", "temperature": 1e-300}, "temperature"),
    ({"text": "x" * 6000}, "characters"),
    ({}, "give a user_id"), ({"user_id": "u0", "text": "hi"}, "not both"),
])
def test_bad_requests_are_refused_with_the_reason(recommender, request_fields, message):
    with pytest.raises(ValueError, match=message):
        recommender.recommend(RecommendRequest(**request_fields))
    with pytest.raises(UnknownUserError, match="nobody"):
        recommender.recommend(RecommendRequest(user_id="nobody"))
    with pytest.raises(UnknownItemsError, match="None of the recent_item_ids"):
        recommender.recommend(RecommendRequest(recent_item_ids=["nope"]))


def test_metrics_label_routes_so_unknown_paths_add_no_series(recommender):
    with TestClient(create_app(recommender)) as client:
        client.get("/health")
        size = len(client.get("/metrics").text)
        for i in range(200):
            assert client.get(f"/no/such/path/{i}").status_code == 404
        metrics = client.get("/metrics").text
    assert 'recsys_requests_total{endpoint="unmatched",status="404"} 200.0' in metrics
    assert "/no/such/path" not in metrics
    assert len(metrics) < size + 3000  # one new series (and its histogram), not 200


def test_http_api_serves_logs_and_takes_feedback(recommender, tmp_path):
    with TestClient(create_app(recommender)) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["items"] == 12 and health["logging"] is True
        served = client.post("/recommend", json={"user_id": "u2", "k": 3, "seed": 5})
        assert served.status_code == 200
        body = served.json()
        clicked = body["items"][1]["item_id"]
        assert client.post("/feedback", json={"request_id": body["request_id"], "item_id": clicked}).status_code == 200
        assert client.post("/recommend", json={"text": "A 40 year old engineer.", "k": 2}).status_code == 200
        metrics = client.get("/metrics").text
        assert 'recsys_requests_total{endpoint="/recommend",status="200"} 2.0' in metrics
        assert "recsys_request_seconds_bucket" in metrics
        assert client.get("/docs").status_code == 200 and "/recommend" in client.get("/openapi.json").text
    impressions = read_impressions(tmp_path / "log")  # closed on shutdown, every line complete
    assert len(impressions) == 2 and impressions["request_id"].iloc[0] == body["request_id"]
    assert impressions["slate"].iloc[0] == [i["item_id"] for i in body["items"]]
    assert len(impressions["candidate_ids"].iloc[0]) == len(impressions["candidate_scores"].iloc[0]) >= 3
    feedback = bandit_feedback(tmp_path / "log", n_actions=12)
    assert feedback["n_rounds"] == 5 and feedback["reward"].sum() == 1.0
    assert feedback["reward"][feedback["slate_id"] == 0].tolist() == [0.0, 1.0, 0.0]
    assert np.all(feedback["pscore_cascade"] <= 1) and np.all(feedback["pscore_item_position"] > 0)
    position = bandit_feedback(tmp_path / "log", n_actions=12, kind="position")
    assert position["position"].tolist() == [0, 1, 2, 0, 1]


@pytest.mark.parametrize("payload, status, reason", [
    ({"user_id": "nobody"}, 404, "Unknown user_id"), ({"user_id": "u0", "k": 0}, 422, "k must be"),
    ({"user_id": "u0", "k": 10_000}, 422, "k must be"), ({"user_id": "u0", "temperature": -1}, 422, "temperature"),
    ({"user_id": "u0", "k": "ten"}, 422, "k: Input should be a valid integer"),
    ({"user_id": "u0", "surprise": 1}, 422, "surprise"), ({"text": "y" * 100_000}, 422, "characters"),
    ({"user_id": "u0", "seed": -1}, 422, "seed"), ('{"user_id": "u0", "temperature": NaN}', 422, "temperature"),
    ('{"user_id": ', 422, "JSON"), ("[]", 422, "body"),
    ('{"text": "\\ud800 fan"}', 422, "text: Value error, holds an unpaired surrogate"),
    ('{"recent_item_ids": ["\\ud800"]}', 422, "recent_item_ids.0"), ('{"user_id": "u0", "exclude": ["\\udfff"]}', 422,
                                                                      "exclude.0"),
    ({"user_id": "u0", "temperature": False}, 422, "temperature: Input should be a valid number"),
    ({"user_id": "u0", "k": True}, 422, "k: Input should be a valid integer"),
    ({"user_id": "u0", "exclude": ["i1"] * 1001}, 422, "1001 excluded items; the limit is 1000"),
])
def test_bad_client_input_never_gets_a_server_error(recommender, payload, status, reason):
    with TestClient(create_app(recommender), raise_server_exceptions=False) as client:
        if isinstance(payload, str):
            response = client.post("/recommend", content=payload, headers={"content-type": "application/json"})
        else:
            response = client.post("/recommend", json=payload)
        assert response.status_code == status, response.text
        assert reason in response.json()["detail"]
        assert client.post("/feedback", json={"request_id": "r", "item_id": "i1", "reward": "lots"}).status_code == 422
    logged = recommender.log.folder.glob("impressions-*.jsonl")
    assert sum(len(path.read_text().splitlines()) for path in logged) == 0  # refused requests are never logged


def test_log_rotates_and_loses_no_record(tmp_path):
    log = PropensityLog(tmp_path, max_bytes=200)
    for n in range(10):
        log.log_feedback(Feedback(str(n), "x" * 100, 1.0, "2026-01-01T00:00:00+00:00"))
    log.close()
    assert len(list(tmp_path.glob("feedback-*.jsonl"))) >= 5
    assert sorted(read_feedback(tmp_path)["request_id"].astype(int)) == list(range(10))


def test_log_lines_are_utf8_not_escapes(tmp_path):
    log = PropensityLog(tmp_path)
    log.log_feedback(Feedback("r1", "Crème brûlée 🎉", 1.0, "2026-01-01T00:00:00+00:00"))
    log.close()
    raw = next(tmp_path.glob("feedback-*.jsonl")).read_bytes()
    assert "Crème brûlée 🎉".encode() in raw and b"\\u" not in raw
    assert read_feedback(tmp_path)["item_id"].tolist() == ["Crème brûlée 🎉"]


def test_a_write_the_disk_cut_short_leaves_no_torn_record(tmp_path, caplog):
    import errno

    log = PropensityLog(tmp_path)
    log.log_feedback(Feedback("r1", "a", 1.0, "2026-01-01T00:00:00+00:00"))
    real = log._feedback.file

    class FullDisk:  # writes half the line, then fails as a full disk does
        def write(self, text: str) -> None:
            real.write(text[: len(text) // 2])
            real.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(real, name)

    log._feedback.file = FullDisk()
    with pytest.raises(OSError, match="No space left"):
        log.log_feedback(Feedback("r2", "b", 1.0, "2026-01-01T00:00:01+00:00"))
    log.log_feedback(Feedback("r3", "c", 1.0, "2026-01-01T00:00:02+00:00"))  # space is back
    log.close()
    caplog.set_level("WARNING")
    files = sorted(tmp_path.glob("feedback-*.jsonl"))
    assert all(f.read_text().endswith("\n") for f in files)  # the half-written record was cut off again
    assert read_feedback(tmp_path)["request_id"].tolist() == ["r1", "r3"] and not caplog.records
    torn = files[0]
    torn.write_text(torn.read_text() + '{"request_id": "r')  # what a crash mid-write leaves
    assert read_feedback(tmp_path)["request_id"].tolist() == ["r1", "r3"]
    assert any("line 2: a record cut short" in r.getMessage() for r in caplog.records)
    torn.write_text(torn.read_text() + "\n" + json.dumps({"request_id": "r4"}) + "\n")  # a bad line mid-file
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        read_feedback(tmp_path)


def test_a_log_that_cannot_be_written_answers_503_and_health_says_why_until_it_can(recommender, monkeypatch):
    import errno

    def full(record):
        raise OSError(errno.ENOSPC, "No space left on device")

    with TestClient(create_app(recommender)) as client:
        assert client.get("/health").json()["log_error"] is None
        with monkeypatch.context() as patch:
            patch.setattr(recommender.log._impressions, "write", full)
            refused = client.post("/recommend", json={"user_id": "u1", "k": 2})
            assert refused.status_code == 503 and "No space left" in refused.json()["detail"]
            health = client.get("/health")
            assert health.status_code == 503 and "No space left" in health.json()["log_error"]
        assert client.post("/recommend", json={"user_id": "u1", "k": 2}).status_code == 200  # space is back
        assert client.get("/health").json()["status"] == "ok"


def test_feedback_for_slates_served_before_a_restart_is_accepted_after_it(flat_export, tmp_path):
    from dataclasses import replace

    config = replace(EXPLORING, feedback_window=2)
    first = Recommender.load(flat_export, config, log_dir=tmp_path / "log")
    served = [first.recommend(RecommendRequest(user_id="u1", k=2, seed=s)) for s in range(3)]
    first.log.close()  # the process ends (a crash leaves the same lines: each is flushed when written)
    again = Recommender.load(flat_export, config, log_dir=tmp_path / "log")
    for response in served[1:]:  # the window's last two
        again.feedback(response["request_id"], response["items"][0]["item_id"], 1.0)
    with pytest.raises(UnknownRequestError):
        again.feedback(served[0]["request_id"], served[0]["items"][0]["item_id"], 1.0)  # beyond the window
    with pytest.raises(ConflictError):
        again.feedback(served[1]["request_id"], "not-shown", 1.0)
    again.log.close()
    assert read_feedback(tmp_path / "log")["request_id"].tolist() == [r["request_id"] for r in served[1:]]


def test_impression_lines_are_typed_and_versioned(recommender):
    recommender.recommend(RecommendRequest(user_id="u1", k=2, seed=0))
    recommender.log.close()
    path = next(recommender.log.folder.glob("impressions-*.jsonl"))
    line = json.loads(path.read_text())
    assert line["schema_version"] == SCHEMA_VERSION and Impression.from_json(line, "here").slate == line["slate"]
    assert line["catalog_size"] == len(recommender.export.items)
    served = recommender.export.split.history(recommender.export.user_rows["u1"], "all")
    assert line["history_ids"] == recommender.export.item_ids[served].tolist()
    assert line["user_text"] == recommender.export.users["profile"][recommender.export.user_rows["u1"]]
    old = {k: v for k, v in line.items() if k not in ("user_text", "history_ids", "schema_version")}
    assert Impression.from_json(old, "here").history_ids is None  # version 1 lines still read (for OPE)
    future = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match=f"schema version {future}"):
        Impression.from_json({**line, "schema_version": future}, "here")
    path.write_text(json.dumps({k: v for k, v in line.items() if k != "slate_rows"}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: not a recsys_tt impression line \(missing \['slate_rows'\]"):
        read_impressions(recommender.log.folder)


def test_the_shipped_serving_config_parses(capsys):
    import serve
    from recsys_tt.cli import run

    with pytest.raises(SystemExit) as done:
        run(serve.main, ["--config", "configs/serve.yaml", "--export", "exports/x", "--print_config"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "temperature: 0.05" in printed and "candidates: 200" in printed


def test_serve_help_describes_every_serving_option(capsys):
    import serve
    from recsys_tt.cli import run

    with pytest.raises(SystemExit):
        run(serve.main, ["--help"])
    text = capsys.readouterr().out
    assert "--serving.exploration.temperature" in text
    assert undocumented_options(text, ("--serving.",)) == []


def test_server_refuses_an_incomplete_or_tampered_export(flat_export, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(flat_export, broken)
    (broken / "vectors.npy").unlink()
    with pytest.raises(ValueError, match="not a complete recsys_tt export"):
        Recommender.load(broken)
    tampered = tmp_path / "tampered"
    shutil.copytree(flat_export, tampered)
    meta = json.loads((tampered / "meta.json").read_text())
    wrong = meta["sha256"] | {"towers.safetensors": "0" * 64}
    (tampered / "meta.json").write_text(json.dumps(meta | {"sha256": wrong}))
    with pytest.raises(ValueError, match="towers.safetensors changed after"):
        Recommender.load(tampered)
    (tampered / "meta.json").write_text(json.dumps(meta))
    vectors = np.load(tampered / "vectors.npy")
    np.save(tampered / "vectors.npy", vectors[::-1].copy())  # the same shape, other rows: only the hash tells
    with pytest.raises(ValueError, match="vectors.npy changed after"):
        Recommender.load(tampered)
    (tampered / "meta.json").write_text(json.dumps(meta)[: len(json.dumps(meta)) // 2])
    with pytest.raises(ValueError, match="meta.json is not valid JSON"):
        Recommender.load(tampered)
    assert ExportFolder.load(flat_export).meta["num_items"] == 12  # the original is untouched


def test_serving_imports_no_training_code(flat_export):
    """A request's whole path (HTTP app, Recommender, export reader, towers) loads neither Lightning nor the
    training modules; checked in a fresh interpreter, which then serves one request."""
    import subprocess
    import sys

    code = (f"import sys\nfrom recsys_tt.serving.http_api import create_app\n"
            f"from recsys_tt.serving.recommender import Recommender\n"
            f"from recsys_tt.serving.requests import RecommendRequest\nr = Recommender.load({str(flat_export)!r})\n"
            f"print(len(r.recommend(RecommendRequest(user_id='u0', k=3))['items']))\n"
            f"print([m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning_fabric') or "
            f"m.startswith(('recsys_tt.training', 'recsys_tt.offline', 'recsys_tt.model.loss', "
            f"'recsys_tt.data.movielens'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["3", "[]"]


def test_bodies_over_the_limit_are_refused_before_parsing(flat_export):
    small = Recommender.load(flat_export, ServingConfig(max_body_bytes=200))
    with TestClient(create_app(small), raise_server_exceptions=False) as client:
        big = {"user_id": "u0", "exclude": ["i1"] * 100}
        declared = client.post("/recommend", json=big)
        parts = [b'{"user_id": "u0", "exclude": [', b'"i1", ' * 60 + b'"i1"]}']  # no length declared: chunked
        chunked = client.post("/recommend", content=iter(parts), headers={"content-type": "application/json"})
        assert client.post("/recommend", json={"user_id": "u0", "k": 2}).status_code == 200
    for response in (declared, chunked):
        assert response.status_code == 413 and "max_body_bytes" in response.json()["detail"], response.text


def test_feedback_must_name_a_served_slate_and_a_bounded_reward(recommender):
    served = recommender.recommend(RecommendRequest(user_id="u1", k=2, seed=0))
    shown = served["items"][0]["item_id"]
    with TestClient(create_app(recommender)) as client:
        def post(**body):
            return client.post("/feedback", json=body)

        assert post(request_id=served["request_id"], item_id=shown, reward=2.5).status_code == 200
        never = post(request_id="f" * 32, item_id=shown)
        unshown = next(i for i in recommender.export.item_ids if i not in {x["item_id"] for x in served["items"]})
        elsewhere = post(request_id=served["request_id"], item_id=unshown)
        huge = post(request_id=served["request_id"], item_id=shown, reward=1e308)
        boolean = post(request_id=served["request_id"], item_id=shown, reward=True)
    assert never.status_code == 404 and "was not served" in never.json()["detail"]
    assert elsewhere.status_code == 409 and "was not in the slate" in elsewhere.json()["detail"]
    assert huge.status_code == 422 and "[-1e+06, 1e+06]" in huge.json()["detail"]
    assert boolean.status_code == 422
    assert read_feedback(recommender.log.folder)["reward"].tolist() == [2.5]  # only the valid one was logged


def _impression(request_id: str) -> Impression:
    return Impression(request_id, "t", "u1", False, 0, ["i1"], [0], [0.5], 0.0, 0, 0.0, 0.0, 1, ["i1"], [0], [1.0],
                      [1.0], 1.0, 0, 0, "v", "v")


def test_log_files_beyond_the_cap_are_deleted_oldest_first_with_their_feedback(tmp_path, caplog):
    log = PropensityLog(tmp_path, max_bytes=50, max_files=3)
    for n in range(8):
        log.log_slate(_impression(str(n)))
        log.log_feedback(Feedback(str(n), "x" * 60, 1.0, "t"))
    log.close()
    assert len(list(tmp_path.glob("impressions-*.jsonl"))) == 3 and "deleting the oldest" in caplog.text
    assert read_impressions(tmp_path)["request_id"].tolist() == ["5", "6", "7"]
    assert read_feedback(tmp_path)["request_id"].tolist() == ["5", "6", "7"]  # no click outlives its slate


def test_the_openapi_document_matches_what_the_server_sends(recommender):
    with TestClient(create_app(recommender)) as client:
        spec = client.get("/openapi.json").json()
        metrics = client.get("/metrics")
    responses = spec["paths"]["/recommend"]["post"]["responses"]
    assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert {"404", "413"} <= set(responses) and "HTTPValidationError" not in spec["components"]["schemas"]
    assert "404" in spec["paths"]["/feedback"]["post"]["responses"]
    for path, method, model in (("/recommend", "post", "RecommendResponse"), ("/feedback", "post", "FeedbackResponse"),
                                ("/health", "get", "HealthResponse")):
        answer = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer["$ref"].endswith(f"/{model}")  # typed, so a client or fuzzer can check every 200
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == [metrics.headers["content-type"]]
    assert metrics.headers["content-type"].startswith("text/plain")


def _runtime_value(response_body, expression):
    """What an OpenAPI link's "$response.body#/a/0/b" names in a response body; any other value as it is."""
    if not (isinstance(expression, str) and expression.startswith("$response.body#/")):
        return expression
    for part in expression.split("#/", 1)[1].split("/"):
        response_body = response_body[int(part)] if isinstance(response_body, list) else response_body[part]
    return response_body


def test_the_openapi_link_from_a_slate_to_its_feedback_works_as_written(recommender):
    with TestClient(create_app(recommender)) as client:
        spec = client.get("/openapi.json").json()
        link = spec["paths"]["/recommend"]["post"]["responses"]["200"]["links"]["Feedback"]
        target = {op["operationId"]: path for path, ops in spec["paths"].items() for op in ops.values()}
        served = client.post("/recommend", json={"user_id": "u1", "k": 3}).json()
        body = {name: _runtime_value(served, value) for name, value in link["requestBody"].items()}
        answer = client.post(target[link["operationId"]], json=body)
    assert body["item_id"] == served["items"][0]["item_id"] and answer.status_code == 200, answer.text


LIMITED = replace(EXPLORING, max_k=5, max_text_chars=20, max_recent_items=3, max_exclude=4, max_abs_reward=10.0)
RECOMMEND_BODIES = [
    {"user_id": "u1"}, {"user_id": "u1", "k": 5}, {"user_id": "u1", "k": 6}, {"user_id": "u1", "k": 0},
    {"text": "x" * 20}, {"text": "x" * 21}, {"text": " \t "}, {"text": " a "}, {}, {"user_id": None, "text": "hi"},
    {"user_id": "u1", "text": "hi"}, {"user_id": "u1", "text": None}, {"user_id": "u1", "recent_item_ids": []},
    {"user_id": "u1", "recent_item_ids": ["i1"]}, {"recent_item_ids": ["i1", "i2", "i3"]},
    {"recent_item_ids": ["i1", "i2", "i3", "i4"]}, {"text": " ", "recent_item_ids": ["i1"]},
    {"recent_item_ids": ["nope"]}, {"user_id": "nobody"}, {"user_id": "u1", "exclude": ["i1"] * 4},
    {"user_id": "u1", "exclude": ["i1"] * 5}, {"user_id": "u1", "temperature": 0},
    {"user_id": "u1", "temperature": MIN_TEMPERATURE}, {"user_id": "u1", "temperature": MIN_TEMPERATURE / 2},
    {"user_id": "u1", "temperature": -0.1}, {"user_id": "u1", "temperature": MAX_TEMPERATURE},
    {"user_id": "u1", "temperature": 1e308}, {"user_id": "u1", "k": 5.0}, {"user_id": "u1", "seed": 7.0},
    {"user_id": "u1", "k": 2.5}, {"user_id": "u1", "k": True}, {"user_id": "u1", "k": "5"},
    {"text": "\u001c\u001f"}, {"text": "\u0085"}, {"text": "\u0085a"},  # blank to Python, not to JSON Schema's \S
]


def test_a_request_is_accepted_exactly_when_it_fits_the_openapi_document(flat_export, tmp_path):
    """What schemathesis's positive_data_acceptance and negative_data_rejection check: a body the document allows
    is answered 200 (or 404/409 for ids or state the document cannot know), and any other body 422."""
    recommender = Recommender.load(flat_export, LIMITED, log_dir=tmp_path / "log")
    with TestClient(create_app(recommender)) as client:
        document = client.get("/openapi.json").json()
        schemas = document["components"]["schemas"]
        answers = {"/recommend": "RecommendResponse", "/feedback": "FeedbackResponse"}

        def check(path: str, schema: str, body: dict, expected_when_valid: int = 200) -> None:
            valid = Draft202012Validator(schemas[schema]).is_valid(body)
            response = client.post(path, json=body)
            assert response.status_code == (expected_when_valid if valid else 422), (body, valid, response.status_code)
            answer = answers[path] if response.status_code == 200 else "ErrorBody"
            Draft202012Validator({"$ref": f"#/components/schemas/{answer}", **document}).validate(response.json())

        for body in RECOMMEND_BODIES:
            check("/recommend", "RecommendBody", body, 404 if body.get("user_id") == "nobody" or
                  body.get("recent_item_ids") == ["nope"] else 200)
        served = client.post("/recommend", json={"user_id": "u1", "k": 2}).json()
        shown, request_id = served["items"][0]["item_id"], served["request_id"]
        unshown = next(i for i in recommender.export.item_ids if i not in {x["item_id"] for x in served["items"]})
        for reward in (10.0, -10.0, 10.5, -1e9):
            check("/feedback", "FeedbackBody", {"request_id": request_id, "item_id": shown, "reward": reward})
        check("/feedback", "FeedbackBody", {"request_id": request_id, "item_id": unshown}, 409)
        check("/feedback", "FeedbackBody", {"request_id": "f" * 32, "item_id": shown}, 404)
    assert Draft202012Validator(schemas["RecommendBody"]).is_valid({"user_id": "u1", "k": 5})  # the checks ran
    assert not Draft202012Validator(schemas["RecommendBody"]).is_valid({"user_id": "u1", "k": 6})


def test_unparseable_bodies_and_seeds_answer_as_the_openapi_document_says(recommender):
    with TestClient(create_app(recommender)) as client:
        spec = client.get("/openapi.json").json()
        garbled = client.post("/feedback", content=b".\xffP\x10", headers={"content-type": "application/json"})
        too_big = client.post("/recommend", json={"user_id": "u1", "seed": 2**53})
        largest = client.post("/recommend", json={"user_id": "u1", "seed": 2**53 - 1})
        unseeded = client.post("/recommend", json={"user_id": "u1"})
    assert garbled.status_code == 400 and "400" in spec["paths"]["/feedback"]["post"]["responses"]
    assert "400" in spec["paths"]["/recommend"]["post"]["responses"]
    seed = spec["components"]["schemas"]["RecommendBody"]["properties"]["seed"]["anyOf"][0]
    assert seed["exclusiveMaximum"] == 2**53 and float(2**53) == 2**53  # exact even when read as a float
    assert too_big.status_code == 422 and largest.status_code == 200
    assert 0 <= unseeded.json()["seed"] < 2**53  # a served seed can always be sent back


def test_concurrent_misses_for_different_users_are_encoded_in_shared_batches(flat_export):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    plain = Recommender.load(flat_export, EXPLORING)
    encode, batches, lock = plain.user_vectors.encode, [], threading.Lock()

    def slow_encode(users, *args):
        with lock:
            batches.append(len(users))
        time.sleep(0.3)  # the other requests arrive while the first batch encodes
        return encode(users, *args)

    plain.user_vectors.encode = slow_encode
    users = [f"u{u}" for u in range(8)]
    with ThreadPoolExecutor(8) as pool:
        slates = list(pool.map(lambda u: plain.recommend(RecommendRequest(user_id=u, k=2, temperature=0.0)), users))
    assert sum(batches) == 8 and len(batches) < 8  # every user encoded once, most of them together
    expected = Recommender.load(flat_export, EXPLORING)
    for user, slate in zip(users, slates):
        alone = expected.recommend(RecommendRequest(user_id=user, k=2, temperature=0.0))
        assert [i["item_id"] for i in slate["items"]] == [i["item_id"] for i in alone["items"]]
    assert plain.user_vectors.waiting == 0


def test_a_failed_batch_encode_fails_its_requests_and_not_the_next(flat_export):
    plain = Recommender.load(flat_export, EXPLORING)
    encode = plain.user_vectors.encode
    plain.user_vectors.encode = lambda users, *args: (_ for _ in ()).throw(RuntimeError("backbone out of memory"))
    with pytest.raises(RuntimeError, match="out of memory"):
        plain.recommend(RecommendRequest(user_id="u1", k=2))
    plain.user_vectors.encode = encode
    assert len(plain.recommend(RecommendRequest(user_id="u1", k=2))["items"]) == 2  # nothing stuck pending


def test_an_adaptive_boost_on_the_largest_temperature_stays_finite():
    config = ExplorationConfig(temperature=MAX_TEMPERATURE, adaptive_boost=1e300)
    assert config.user_temperature(0) == MAX_TEMPERATURE
    with pytest.raises(ValueError, match="temperature=1e\\+308"):
        ExplorationConfig(temperature=1e308)


def test_what_a_server_keeps_per_new_user_does_not_grow_with_their_text(recommender):
    """The user-vector cache and the feedback window keep a digest and rows, not the text and item ids, so a client
    sending long texts costs a fixed amount per entry (serving.cache_size and feedback_window bound the count)."""
    import gc
    import itertools
    import tracemalloc

    new_users = itertools.count()

    def kept_per_user(text_chars: int, users: int = 150) -> float:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for _ in range(users):  # each text dies with its request, as in a server
            text = f"{next(new_users)} " + "\U0001F3AC" * text_chars
            recommender.recommend(RecommendRequest(text=text, k=5, seed=0))
            del text
        gc.collect()
        grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename"))
        tracemalloc.stop()
        return grown / users

    kept_per_user(4_990)  # the first requests allocate what every later one reuses
    short, long = kept_per_user(10), kept_per_user(4_990)  # about 5,000 emoji: a 20 KB string each
    vector_bytes = recommender.export.vectors.shape[1] * 4
    assert long < short + 500, (short, long)
    assert long < vector_bytes + 1_500, long
