"""Off-policy estimates from simulator logs against the simulator's true values, on a tiny export."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_tt.data.propensity_log import PropensityLog
from recsys_tt.export.folder import ExportFolder
from recsys_tt.offline.ope import LoggedSlates, evaluate_target, fit_reward_model
from recsys_tt.offline.simulator import SimulatedUsers, held_out_metrics, log_repeated_round, run_policy, true_values
from recsys_tt.serving.explore import ExplorationConfig, pick_probabilities
from recsys_tt.serving.recommender import Recommender
from recsys_tt.serving.requests import ServingConfig
from tests.helpers import load_script

LOGGING = ExplorationConfig(temperature=0.5, epsilon=0.1, propensity_samples=1000)
TARGETS = {"greedy": ExplorationConfig(temperature=0.0), "tau 0.2": ExplorationConfig(temperature=0.2),
           "tau 1.0": ExplorationConfig(temperature=1.0), "head 1, tau 0.5": ExplorationConfig(temperature=0.5, head=1),
           "adaptive": ExplorationConfig(temperature=0.2, adaptive_boost=2.0, adaptive_half_life=3.0)}


@pytest.fixture(scope="module")
def logged_round(flat_export, tmp_path_factory):
    """The same first round served 80 times by an exploring logging policy (users are not updated)."""
    export = ExportFolder.load(flat_export)
    users = SimulatedUsers.from_export(export, start_fraction=0.5)
    folder = tmp_path_factory.mktemp("ope_log")
    recommender = Recommender(export, ServingConfig(candidates=12, exploration=LOGGING), log=PropensityLog(folder))
    return folder, log_repeated_round(recommender, users, k=3, replications=80)


def test_simulated_users_start_with_part_of_their_history_and_like_the_rest(flat_export):
    export = ExportFolder.load(flat_export)
    users = SimulatedUsers.from_export(export, start_fraction=0.5)
    assert len(users) == 8 and all(len(h) == 3 for h in users.histories)
    assert all(not set(h) & liked for h, liked in zip(users.histories, users.liked))
    with pytest.raises(ValueError, match="start_fraction"):
        SimulatedUsers.from_export(export, start_fraction=1.0)


@pytest.fixture(scope="module")
def inverse_logging(logged_round) -> np.ndarray:
    return LoggedSlates.from_log(logged_round[0]).inverse_propensities(np.random.default_rng(0))


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("reestimated", [False, True])
def test_off_policy_estimates_contain_the_true_value_of_each_target(logged_round, inverse_logging, target, reestimated):
    folder, liked = logged_round
    truth = true_values(folder, liked, {target: TARGETS[target]}, k=3)[target]
    estimates = evaluate_target(LoggedSlates.from_log(folder), TARGETS[target], samples=400, bootstrap=400,
                                inverse_logging=inverse_logging if reestimated else None)
    assert estimates["slates"] == 640 and estimates["ess_min"] > 1
    for name in ("IPS", "SNIPS", "DR"):
        estimate = estimates[name]
        assert estimate["low"] <= truth <= estimate["high"], f"{name} {estimate} misses the true value {truth:.4f}"


def test_reestimated_inverse_propensities_are_unbiased():
    """Geometric draw counts average to 1 / p; p of the first position is the exact first-pick probability."""
    scores = np.array([0.9, 0.5, 0.4, 0.1])
    policy = ExplorationConfig(temperature=0.2, epsilon=0.1)
    picks = np.array([[3, 0]] * 3000)  # the least likely item first, then the best
    logged = LoggedSlates([scores] * 3000, picks, np.full((3000, 2), 0.5), np.zeros((3000, 2)), np.zeros(3000),
                          [policy] * 3000)
    inverse = logged.inverse_propensities(np.random.default_rng(0), chunk=64)
    exact = 1 / pick_probabilities(scores, np.array([3]), 0.2, 0, 0.1)[0]
    assert inverse[:, 0].mean() == pytest.approx(exact, rel=0.05) and exact > 20


def test_the_logging_policy_evaluates_itself_with_unit_weights(logged_round):
    folder, liked = logged_round
    logged = LoggedSlates.from_log(folder)
    estimates = evaluate_target(logged, LOGGING, samples=2000, bootstrap=200)
    on_policy = logged.rewards.sum(1).mean()
    assert estimates["IPS"]["value"] == pytest.approx(on_policy, rel=0.1)
    assert estimates["ess_mean"] > 0.8 * len(logged.picks)


def test_reward_model_learns_that_higher_scores_and_top_positions_click_more(logged_round):
    weights = fit_reward_model(LoggedSlates.from_log(logged_round[0]))
    assert weights[0] > weights[2]  # position 1 is examined more than position 3
    assert np.isfinite(weights).all()


def test_a_policy_run_improves_clicks_coverage_and_logs_every_slate(flat_export, tmp_path):
    export = ExportFolder.load(flat_export)
    users = SimulatedUsers.from_export(export, start_fraction=0.5)
    result = run_policy(export, users, ServingConfig(exploration=ExplorationConfig(temperature=0.5)), rounds=3,
                        k=3, log_dir=str(tmp_path))
    assert len(result["clicks_per_round"]) == 3 and result["cumulative_clicks"] > 0
    assert 0 < result["coverage"] <= 1 and result["novelty"] > 0
    logged = LoggedSlates.from_log(tmp_path)
    assert logged.picks.shape == (3 * 8, 3) and logged.rewards.sum() == pytest.approx(result["cumulative_clicks"] * 8)
    assert all(len(h) == 3 for h in users.histories)  # the caller's users are not modified


def test_users_like_their_future_interactions_when_a_future_table_is_given(flat_export, tmp_path):
    import pandas as pd

    future = tmp_path / "future.csv"
    pd.DataFrame({"user_id": ["u0", "u0", "u0", "u5"], "item_id": ["i11", "nope", "i0", "i7"]}).to_csv(future,
                                                                                                      index=False)
    export = ExportFolder.load(flat_export)
    users = SimulatedUsers.from_export(export, future=str(future))
    rows = export.item_rows
    assert len(users) == 1  # u5 already had i7; others have no future
    assert users.histories[0] == export.split.history(0, "all").tolist() and users.liked[0] == {rows["i11"]}


def test_split_by_time_keeps_each_users_earliest_interactions(tmp_path):

    import pandas as pd

    from tests.helpers import write_tiny_dataset

    split_by_time = load_script("split_by_time")

    paths = write_tiny_dataset(tmp_path / "data")
    split_by_time.main(paths["interactions"], str(tmp_path / "split"), fraction=0.5)
    past, future = pd.read_csv(tmp_path / "split/past.csv"), pd.read_csv(tmp_path / "split/future.csv")
    assert len(past) == len(future) == 24
    assert past.groupby("user_id")["timestamp"].max().lt(future.groupby("user_id")["timestamp"].min()).all()
    with pytest.raises(ValueError, match="fraction"):
        split_by_time.main(paths["interactions"], str(tmp_path / "bad"), fraction=1.5)


def test_ope_script_prints_and_writes_every_target(logged_round, tmp_path, capsys):

    ope = load_script("ope")

    ope.main(str(logged_round[0]), targets=[TARGETS["greedy"], TARGETS["tau 0.2"]], samples=100, bootstrap=50,
             json_out=str(tmp_path / "ope.json"))
    import json

    written = json.loads((tmp_path / "ope.json").read_text())
    assert [t["target"] for t in written["targets"]] == ["greedy", "tau 0.2"]
    assert "SNIPS" in capsys.readouterr().out


def _future(tmp_path) -> str:
    """Three later items per tiny user (user u watched items u..u+5 in training)."""
    import pandas as pd

    rows = [{"user_id": f"u{u}", "item_id": f"i{(u + 6 + j) % 12}"} for u in range(8) for j in range(3)]
    pd.DataFrame(rows).to_csv(tmp_path / "future.csv", index=False)
    return str(tmp_path / "future.csv")


def test_held_out_items_are_never_clicked_and_rank_as_leave_one_out_does(flat_export, tmp_path):
    export = ExportFolder.load(flat_export)
    users = SimulatedUsers.from_export(export, future=_future(tmp_path), hold_out_last=True)
    rows = export.item_rows
    assert len(users) == 8 and users.held_out[0] == rows["i8"] and users.liked[0] == {rows["i6"], rows["i7"]}
    got = held_out_metrics(export, users, ks=(3,))
    vectors = export.new_user_vectors(users.profiles, [np.asarray(h) for h in users.histories])
    hits, gains = [], []
    for vector, history, target in zip(vectors, users.histories, users.held_out):
        scores = export.vectors @ vector
        scores[history] = -np.inf
        rank = int((scores > scores[target]).sum())
        hits.append(rank < 3)
        gains.append(1 / np.log2(rank + 2) if rank < 3 else 0.0)
    assert got["recall@3"] == pytest.approx(np.mean(hits)) and got["ndcg@3"] == pytest.approx(np.mean(gains))


def test_a_retraining_loop_serves_each_round_with_the_export_retrain_returns(flat_export, tmp_path):
    export = ExportFolder.load(flat_export)
    users = SimulatedUsers.from_export(export, future=_future(tmp_path), hold_out_last=True)
    calls = []

    def retrain(round_index: int) -> ExportFolder:
        calls.append((round_index, len(LoggedSlates.from_log(tmp_path / "log").picks)))
        return export

    result = run_policy(export, users, ServingConfig(exploration=ExplorationConfig(temperature=0.5)), rounds=2, k=3,
                        log_dir=str(tmp_path / "log"), retrain=retrain)
    assert calls == [(0, 8), (1, 16)]  # after each round, with every slate logged so far
    assert len(result["held_out_per_round"]) == 2 and len(result["coverage_per_round"]) == 2
    assert result["held_out_per_round"][0] == held_out_metrics(export, users)  # before any click: the start users


@pytest.mark.slow  # a train.py fine-tuning in a subprocess, about 35 s
def test_retraining_script_fine_tunes_exports_and_reports_a_loop(trained, tmp_path, capsys):
    import json

    simulate_retraining = load_script("simulate_retraining")

    from recsys_tt.offline.policies import RETRAINING_LOOPS

    corrected = next(loop.name for loop in RETRAINING_LOOPS if loop.correction == "topk")
    simulate_retraining.main(str(trained[0]), _future(tmp_path), rounds=1, k=3, steps=2, out=str(tmp_path / "loop"),
                             train_args=["--data.batch_size", "2"], loops=[corrected])
    written = json.loads((tmp_path / "loop" / "results.json").read_text())
    assert list(written["simulation"]) == [corrected] and written["loops"][corrected]["correction"] == "topk"
    result = written["simulation"][corrected]
    assert len(result["clicks_per_round"]) == 1 and "ndcg@10" in result["held_out_final"]
    assert len(result["click_weight_ess_per_round"]) == 1 and 0 < result["click_weight_ess_per_round"][0] <= 1
    runs = [p.name for p in (tmp_path / "loop" / "runs").iterdir()]
    assert runs == ["tau_0.02_topk_corrected_retraining_round1"]
    exported = ExportFolder.load(tmp_path / "loop" / "exports" / runs[0])
    assert exported.meta["model_hparams"]["init_checkpoint"] == str(trained[0])
    assert exported.meta["model_hparams"]["loss"]["log_correction"] == "topk"
    assert exported.meta["model_hparams"]["loss"]["log_target_temperature"] == 0.02  # the loop's serving temperature
    assert (tmp_path / "loop" / "retraining.png").stat().st_size > 1000
    assert "NDCG@10 last" in capsys.readouterr().out
    with pytest.raises(ValueError, match="loops must be names of"):
        simulate_retraining.main(str(trained[0]), _future(tmp_path), loops=["no such loop"])


def test_a_corrected_loop_targets_its_serving_policy():
    from recsys_tt.offline.policies import GREEDY, RetrainingLoop

    loop = RetrainingLoop(ExplorationConfig(temperature=0.03), "ips")
    assert loop.train_args() == ["--model.loss.log_correction", "ips", "--model.loss.log_target_temperature", "0.03"]
    assert RetrainingLoop(GREEDY, "none").train_args() == ["--model.loss.log_correction", "none"]
    with pytest.raises(ValueError, match="serving temperature > 0"):
        RetrainingLoop(GREEDY, "topk")
