"""Serving that remembers what a user ignored, and exploration directed by each item's uncertainty."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from recsys_tt.data.propensity_log import SCHEMA_VERSION, read_impressions
from recsys_tt.serving.explore import ExplorationConfig
from recsys_tt.serving.recommender import Recommender
from recsys_tt.serving.requests import BadRequestError, RecommendRequest, ServingConfig

GREEDY = ExplorationConfig(temperature=0.0, propensity_samples=0)


def shown(response: dict) -> list[str]:
    return [item["item_id"] for item in response["items"]]


def test_items_a_user_ignored_twice_are_not_shown_again_unless_clicked(flat_export, tmp_path):
    server = Recommender.load(flat_export, ServingConfig(exploration=GREEDY, ignore_limit=2), log_dir=tmp_path / "log")
    request = RecommendRequest(text="Likes westerns.", k=2, user_key="s1")
    first, second = shown(server.recommend(request)), server.recommend(request)
    assert shown(second) == first  # greedy: the same slate until the limit is reached
    server.feedback(second["request_id"], first[0], 1.0)  # clicked: not ignored
    third = shown(server.recommend(request))
    assert first[0] in third and first[1] not in third
    other = RecommendRequest(text="Likes westerns.", k=2, user_key="s2")
    assert shown(server.recommend(other)) == first  # another user remembers nothing
    assert shown(server.recommend(RecommendRequest(text="Likes westerns.", k=2))) == first  # no key, no memory
    server.log.close()
    restarted = Recommender.load(flat_export, ServingConfig(exploration=GREEDY, ignore_limit=2),
                                 log_dir=tmp_path / "log")
    assert shown(restarted.recommend(request)) == third  # the memory is read back from the log


def test_a_known_user_is_remembered_by_id_and_cannot_also_send_a_key(flat_export):
    server = Recommender.load(flat_export, ServingConfig(exploration=GREEDY, ignore_limit=1))
    first = shown(server.recommend(RecommendRequest(user_id="u1", k=2)))
    assert not set(first) & set(shown(server.recommend(RecommendRequest(user_id="u1", k=2))))
    with pytest.raises(BadRequestError, match="user_key names a new user"):
        server.recommend(RecommendRequest(user_id="u1", user_key="u1", k=2))


def test_directed_slates_log_each_candidates_uncertainty_which_shrinks_as_items_are_shown(flat_export, tmp_path):
    directed = ExplorationConfig(temperature=0.0, bonus=0.3, bonus_pseudo_count=1.0, impression_weight=1.0,
                                 propensity_samples=0)
    server = Recommender.load(flat_export, ServingConfig(exploration=directed), log_dir=tmp_path / "log")
    for _ in range(3):
        server.recommend(RecommendRequest(user_id="u2", k=2))
    server.log.close()
    lines = read_impressions(tmp_path / "log")
    assert (lines["bonus"] == 0.3).all() and (lines["schema_version"] == SCHEMA_VERSION).all()
    first, last = (dict(zip(line.candidate_ids, line.candidate_uncertainty)) for line in
                   (lines.iloc[0], lines.iloc[-1]))
    item = lines.iloc[0]["slate"][0]
    assert last[item] < first[item]  # shown twice since: less uncertain
    counts = dict(zip(server.export.items["item_id"].astype(str), server.export.items["train_count"]))
    assert first == pytest.approx({i: (1 + counts[i]) ** -0.5 for i in first})  # before any impression


def test_a_bonus_brings_in_candidates_the_index_ranks_too_low_to_retrieve(flat_export):
    narrow = ServingConfig(candidates=3, exploration=ExplorationConfig(temperature=0.0, head=1, bonus=10.0,
                                                                      bonus_candidates=2, propensity_samples=0))
    request = RecommendRequest(text="Likes westerns.", k=3)
    plain = Recommender.load(flat_export, replace(narrow, exploration=replace(narrow.exploration, bonus=0.0)))
    vector = plain.user_vectors.get(plain.user(request))
    worst = int(np.argmin(plain.export.vectors @ vector))  # the index would never retrieve it among 3
    assert plain.export.item_ids[worst] not in shown(plain.recommend(request))
    server = Recommender.load(flat_export, narrow)
    server.uncertainty.interactions[:] = 1000.0  # every item well known ...
    server.uncertainty.interactions[worst] = 0.0  # ... but the worst-scored one
    assert plain.export.item_ids[worst] in shown(server.recommend(request))[1:]  # explored below the head


def test_the_directed_serving_config_is_the_simulated_directed_policy(capsys):
    import yaml

    import serve
    from recsys_tt.cli import run
    from recsys_tt.offline.policies import arrival_policies

    with pytest.raises(SystemExit):
        run(serve.main, ["--config", "configs/serve.yaml", "--config", "configs/serve_directed.yaml", "--export",
                         "exports/x", "--print_config"])
    serving = yaml.safe_load(capsys.readouterr().out)["serving"]
    directed = next(p for p in arrival_policies() if p.name.startswith("directed"))
    assert ExplorationConfig(**serving["exploration"]) == directed.exploration
    assert serving["ignore_limit"] == 3 and serving["candidates"] == 200  # the rest stays serve.yaml's


def test_the_http_server_caps_connections_and_closes_idle_ones(flat_export, monkeypatch):
    import uvicorn

    import serve
    from recsys_tt.serving.requests import ServingConfig

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **settings: started.update(settings))
    serve.main(str(flat_export), serving=ServingConfig(max_connections=7, keep_alive_seconds=3))
    assert started["limit_concurrency"] == 7 and started["timeout_keep_alive"] == 3
    with pytest.raises(ValueError, match="serving.max_connections must be positive"):
        ServingConfig(max_connections=0)
