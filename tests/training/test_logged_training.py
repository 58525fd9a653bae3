"""Training from serving logs: reading clicks as examples, the off-policy corrected objective, fine-tuning."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from recsys_tt.data.propensity_log import Feedback
from recsys_tt.model.loss import (
    LossConfig,
    click_weights,
    dcg_examination,
    effective_sample_share,
    position_based_loss,
    sampled_softmax_loss,
)
from recsys_tt.model.towers import TowerConfig
from recsys_tt.model.weights import sub_state
from recsys_tt.serving.explore import ExplorationConfig
from recsys_tt.serving.recommender import Recommender
from recsys_tt.serving.requests import RecommendRequest, ServingConfig
from recsys_tt.training.checkpoint_files import read_checkpoint
from recsys_tt.training.lightning_cli import main
from recsys_tt.training.logged_clicks import read_log, score_logged_slates
from recsys_tt.training.module import TwoTowerModule
from tests.helpers import train_args, write_tiny_dataset

CLICK_RATES = np.array([0.3, 0.6, 0.3, 0.1])  # item 1 is the one users like best
LOGGING = np.array([0.7, 0.1, 0.1, 0.1])  # but the logging policy mostly showed item 0


def _learned_policy(correction: str, rounds: int = 4, seed: int = 0) -> np.ndarray:
    """Logs 4,000 one-item slates drawn from LOGGING with clicks at CLICK_RATES, fits a softmax policy over the four
    items on the clicks with the given correction in ``rounds`` fine-tunings, each weighing the clicks against the
    policy it starts from (as ``TwoTowerModule`` does), and returns that policy."""
    rng = np.random.default_rng(seed)
    shown = rng.choice(4, size=4000, p=LOGGING)
    clicked = shown[rng.random(4000) < CLICK_RATES[shown]]
    positive, logging = torch.as_tensor(clicked), torch.as_tensor(LOGGING[clicked], dtype=torch.float32)
    user = torch.ones(len(clicked), 4) / 2
    items = torch.nn.Parameter(torch.zeros(4, 4))
    config = LossConfig(log_correction=correction)
    for _ in range(rounds):
        policy = torch.softmax(user[:1] @ items.T, dim=1)[0].detach()
        weight = click_weights(policy[positive], torch.zeros(len(positive)), logging, torch.ones_like(positive), config)
        optimizer = torch.optim.Adam([items], lr=0.05)
        for _ in range(100):
            loss = sampled_softmax_loss(user, items, positive, torch.tensor(1.0), weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return torch.softmax(user[:1] @ items.T, dim=1)[0].detach().numpy()


def test_corrected_objective_recovers_the_best_item_where_the_uncorrected_one_learns_the_logging_policy():
    uncorrected = _learned_policy("none")
    # without correction the policy is fitted to clicks as logged, P(shown) x P(click): 0.21, 0.06, 0.03, 0.01
    assert uncorrected.argmax() == 0
    expected = LOGGING * CLICK_RATES / (LOGGING * CLICK_RATES).sum()
    assert np.abs(uncorrected - expected).max() < 0.05
    # weighed against a uniform start, one fine-tuning fits the click rates themselves: 0.23, 0.46, 0.23, 0.08
    once = _learned_policy("ips", rounds=1)
    assert np.abs(once - CLICK_RATES / CLICK_RATES.sum()).max() < 0.05
    for correction in ("ips", "topk"):  # with one-item slates the top-K correction is plain IPS
        corrected = _learned_policy(correction)  # each round moves the target further towards the best item
        assert corrected.argmax() == 1 and corrected[1] > 0.6, (correction, corrected)


def test_click_weights_follow_the_top_k_formula_with_a_capped_ratio_scaled_to_mean_one():
    target, logging, k = torch.tensor([0.1, 0.2, 0.01]), torch.tensor([0.5, 0.1, 0.5]), torch.tensor([3, 3, 2])
    above = torch.tensor([0.0, 0.5, 0.9])  # the target's mass on the items shown above each click
    ratio = [p / (1 - a) / b for p, a, b in zip([0.1, 0.2, 0.01], [0.0, 0.5, 0.9], [0.5, 0.1, 0.5])]  # .2, 4, .2

    def topk(ratios: list[float]) -> list[float]:
        raw = [r * n * (1 - p) ** (n - 1) for r, p, n in zip(ratios, [0.1, 0.2, 0.01], [3, 3, 2])]
        return [w / (sum(raw) / 3) for w in raw]

    got = click_weights(target, above, logging, k, LossConfig(log_correction="topk", log_weight_cap=100.0))
    assert got.tolist() == pytest.approx(topk(ratio), rel=1e-5)
    capped = click_weights(target, above, logging, k, LossConfig(log_correction="topk", log_weight_cap=1.5))
    assert capped.tolist() == pytest.approx(topk([min(r, 1.5) for r in ratio]), rel=1e-5)
    ips = click_weights(target, above, logging, k, LossConfig(log_correction="ips", log_weight_cap=100.0))
    assert ips.tolist() == pytest.approx([r / (sum(ratio) / 3) for r in ratio], rel=1e-5)
    assert click_weights(target, above, logging, k, LossConfig(log_correction="none")).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="log_weight_cap must be positive"):
        LossConfig(log_weight_cap=0)
    with pytest.raises(ValueError, match="log_target_temperature must be positive"):
        LossConfig(log_target_temperature=0)


def test_a_pick_weighs_one_when_the_target_policy_is_the_logging_policy():
    """Plackett-Luce picks of the same softmax: pi / (1 - mass above) is exactly the logged pick probability."""
    policy = torch.tensor([0.5, 0.3, 0.15, 0.05])
    slate = [1, 0, 3]  # a drawn slate, in pick order
    picks = [policy[i] / (1 - policy[slate[:j]].sum()) for j, i in enumerate(slate)]
    weight = click_weights(policy[slate], torch.stack([policy[slate[:j]].sum() for j in range(3)]),
                           torch.stack(picks), torch.tensor([3, 3, 3]), LossConfig(log_correction="ips"))
    assert weight.tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert effective_sample_share(weight).item() == pytest.approx(1.0)
    assert effective_sample_share(torch.tensor([3.0, 0.0, 0.0])).item() == pytest.approx(1 / 3)


def _serve_and_click(export, folder) -> list[dict]:
    """Serves a known and a new user from ``export`` into a log at ``folder`` and clicks each slate's second item."""
    recommender = Recommender.load(export, ServingConfig(exploration=ExplorationConfig(temperature=0.5)),
                                   log_dir=folder)
    responses = [recommender.recommend(RecommendRequest(user_id="u1", k=3, seed=1)),
                 recommender.recommend(RecommendRequest(text="A 30 year old writer.", recent_item_ids=["i1", "i2"],
                                                        k=3, seed=2))]
    for response in responses:
        recommender.feedback(response["request_id"], response["items"][1]["item_id"], 1.0)
    recommender.log.close()
    return responses


def test_logged_clicks_hold_the_user_as_served_and_the_pick_probability(flat_export, tmp_path):
    known, new = _serve_and_click(flat_export, tmp_path / "log")
    recommender = Recommender.load(flat_export)
    rows = recommender.export.item_rows
    clicks = read_log(tmp_path / "log", rows).clicks
    assert len(clicks) == 2 and clicks.slate_size.tolist() == [3, 3]
    assert clicks.items.tolist() == [rows[r["items"][1]["item_id"]] for r in (known, new)]
    assert clicks.pick_probability.tolist() == pytest.approx([r["items"][1]["pick_probability"] for r in (known, new)])
    assert [a.tolist() for a in clicks.above] == [[rows[r["items"][0]["item_id"]]] for r in (known, new)]
    u1 = recommender.export.user_rows["u1"]
    assert clicks.histories[0].tolist() == recommender.export.split.history(u1, "all").tolist()
    assert clicks.profiles[0] == recommender.export.users["profile"][u1]
    assert clicks.histories[1].tolist() == [rows["i1"], rows["i2"]] and clicks.profiles[1] == "A 30 year old writer."


def test_logged_slates_hold_every_shown_item_in_order_and_which_were_clicked(flat_export, tmp_path):
    served = _serve_and_click(flat_export, tmp_path / "log")
    rows = Recommender.load(flat_export).export.item_rows
    slates = read_log(tmp_path / "log", rows).impressions
    assert slates.shown.tolist() == [[rows[i["item_id"]] for i in r["items"]] for r in served]
    assert slates.clicked.tolist() == [[False, True, False]] * 2
    assert slates.profiles[1] == "A 30 year old writer." and slates.histories[1].tolist() == [rows["i1"], rows["i2"]]


def test_log_lines_that_cannot_be_trained_on_are_reported_with_file_and_line(flat_export, tmp_path):
    _serve_and_click(flat_export, tmp_path / "log")
    impressions = next((tmp_path / "log").glob("impressions-*.jsonl"))
    feedback = next((tmp_path / "log").glob("feedback-*.jsonl"))
    lines = [json.loads(line) for line in impressions.read_text().splitlines()]
    old = {k: v for k, v in lines[0].items() if k not in ("user_text", "history_ids", "schema_version")}
    lines[1]["history_ids"] = ["not-an-item"]
    impressions.write_text("".join(json.dumps(line) + "\n" for line in (old, lines[1])))
    with feedback.open("a") as out:
        out.write(json.dumps({"request_id": "never-served", "item_id": "i1", "reward": 1.0, "time": "t"}) + "\n")
    before = {p.name: p.read_bytes() for p in (tmp_path / "log").iterdir()}
    with pytest.raises(ValueError) as error:
        read_log(tmp_path / "log", Recommender.load(flat_export).export.item_rows)
    message = str(error.value)
    assert message.startswith("3 log lines cannot be trained on")
    assert f"{impressions}, line 1: logged before impression schema version 2" in message
    assert f"{impressions}, line 2: item 'not-an-item' is not in the training catalog" in message
    assert f"{feedback}, line 3: request_id 'never-served' has no impression" in message
    assert {p.name: p.read_bytes() for p in (tmp_path / "log").iterdir()} == before  # the log is never modified


def test_a_model_starts_from_the_weights_of_init_checkpoint(trained, tiny_bert):
    checkpoint = read_checkpoint(trained[0])
    hp = checkpoint["hyper_parameters"]
    module = TwoTowerModule(hp["num_items"], TowerConfig(**hp["tower"]), init_checkpoint=str(trained[0]))
    trained_weights = sub_state(checkpoint["state_dict"], "model.")
    for name, value in module.model.state_dict().items():
        if name in trained_weights:
            assert torch.equal(value, trained_weights[name]), name
    assert any("lora_" in name and value.abs().sum() > 0 for name, value in trained_weights.items())


@pytest.mark.parametrize("correction, share", [("topk", "1.0"), ("none", "0.5")])
def test_fine_tuning_on_logged_clicks_from_a_checkpoint(trained, flat_export, tiny_bert, tmp_path, correction, share):
    _serve_and_click(flat_export, tmp_path / "log")
    paths = write_tiny_dataset(tmp_path / "data")  # the data the checkpoint was trained on
    cli = main(train_args(tmp_path, paths, tiny_bert, 2, "--model.init_checkpoint", str(trained[0]),
                          "--data.logs", str(tmp_path / "log"), "--data.logs_share", share,
                          "--model.loss.log_correction", correction, "--model.eval_ks", "[3,5]",
                          "--best_checkpoint.monitor", "val/ndcg@5", "--data.batch_size", "2"))
    losses = pd.read_csv(tmp_path / "ml100k_minilm" / "version_0" / "metrics.csv")["train/loss"].dropna()
    assert len(losses) == 2 and losses.map(math.isfinite).all() and cli.trainer.global_step == 2
    counts = cli.datamodule.item_counts
    assert counts.sum() == sum(len(t) for t in cli.datamodule.split.train) + 2  # the two logged clicks count too


@pytest.mark.filterwarnings("ignore:.*exists and is not empty")  # the test reruns into its own run folder
def test_fine_tuning_weighs_each_click_once_against_the_model_it_starts_from(trained, flat_export, tiny_bert,
                                                                           tmp_path):
    """The clicks were served by the checkpoint's export at temperature 0.5: scored by the model the run starts from
    at that temperature, every pick is as likely as logged, so every ips weight is 1, and stays 1 as the run trains."""
    _serve_and_click(flat_export, tmp_path / "log")
    paths = write_tiny_dataset(tmp_path / "data")
    cli = main(train_args(tmp_path, paths, tiny_bert, 3, "--model.init_checkpoint", str(trained[0]),
                          "--data.logs", str(tmp_path / "log"), "--model.loss.log_correction", "ips",
                          "--model.loss.log_target_temperature", "0.5", "--model.lr", "0.05",
                          "--model.eval_ks", "[3,5]", "--best_checkpoint.monitor", "val/ndcg@5",
                          "--data.batch_size", "2"))
    assert cli.model.click_weight.tolist() == pytest.approx([1.0, 1.0], abs=1e-3)
    ess = pd.read_csv(tmp_path / "ml100k_minilm" / "version_0" / "metrics.csv")["train/click_weight_ess"].dropna()
    assert len(ess) == 3 and ess.tolist() == pytest.approx([1.0] * 3, abs=1e-6)
    saved = read_checkpoint(tmp_path / "ml100k_minilm" / "version_0" / "checkpoints" / "last.ckpt")
    assert torch.equal(saved["click_weight"], cli.model.click_weight)  # a resumed run keeps them
    _serve_and_click(flat_export, tmp_path / "log")  # two more clicks: not the log the run started with
    with pytest.raises(ValueError, match="The checkpoint weighed 2 logged clicks but data.logs holds 4"):
        main(train_args(tmp_path, paths, tiny_bert, 4, "--data.logs", str(tmp_path / "log"),
                        "--ckpt_path", str(tmp_path / "ml100k_minilm" / "version_0" / "checkpoints" / "last.ckpt"),
                        "--model.eval_ks", "[3,5]", "--best_checkpoint.monitor", "val/ndcg@5",
                        "--data.batch_size", "2"))


def test_fine_tuning_on_impressions_starts_calibrated_and_trains_on_skips(trained, flat_export, tiny_bert, tmp_path):
    _serve_and_click(flat_export, tmp_path / "log")
    paths = write_tiny_dataset(tmp_path / "data")
    common = ("--model.init_checkpoint", str(trained[0]), "--data.logs", str(tmp_path / "log"), "--model.eval_ks",
              "[3,5]", "--best_checkpoint.monitor", "val/ndcg@5", "--data.batch_size", "2", "--model.lr", "1e-12",
              "--model.id_lr", "1e-12")
    cli = main(train_args(tmp_path / "on", paths, tiny_bert, 2, *common))
    metrics = pd.read_csv(tmp_path / "on" / "ml100k_minilm" / "version_0" / "metrics.csv")
    assert metrics["train/impression_loss"].dropna().map(math.isfinite).all()
    data, head = cli.datamodule, cli.model.loss
    scores = score_logged_slates(data.log.impressions, cli.model.encoder, data.impression_batch, 8)
    link = torch.tensor(head.relevance_link.tolist(), requires_grad=True)  # lr ~0: where the fit put it
    clicked, shown = torch.as_tensor(data.log.impressions.clicked), torch.as_tensor(data.log.impressions.shown >= 0)
    position_based_loss(scores * link[0] + link[1], clicked, shown, dcg_examination(3)).backward()
    assert link.grad.abs().max() < 1e-3 and link.tolist() != [1.0, 0.0]  # fitted: the likelihood's optimum
    off = main(train_args(tmp_path / "off", paths, tiny_bert, 2, *common, "--model.loss.log_impressions", "0"))
    assert "train/impression_loss" not in pd.read_csv(tmp_path / "off" / "ml100k_minilm" / "version_0" /
                                                      "metrics.csv")
    assert off.model.loss.relevance_link.tolist() == [1.0, 0.0]


def test_logs_share_outside_zero_to_one_is_refused(tiny_dataset, tiny_bert, tmp_path):
    with pytest.raises(ValueError, match=r"data.logs_share must be in \(0, 1\], got 0.0"):
        main(train_args(tmp_path, tiny_dataset, tiny_bert, 2, "--data.logs", str(tmp_path), "--data.logs_share", "0"))


def test_weighted_loss_is_the_weighted_mean_of_row_losses():
    user, item = F.normalize(torch.randn(3, 4), dim=-1), F.normalize(torch.randn(5, 4), dim=-1)
    positive, weight = torch.tensor([0, 2, 4]), torch.tensor([1.0, 0.0, 3.0])
    rows = F.cross_entropy(user @ item.T / 0.1, positive, reduction="none")
    got = sampled_softmax_loss(user, item, positive, torch.tensor(0.1), weight=weight)
    assert got.item() == pytest.approx(float((rows * weight).sum() / 4), rel=1e-5)


def test_retention_deletes_clicks_with_their_slates_and_every_reader_counts_the_same(flat_export, tmp_path, caplog):
    from recsys_tt.offline.ope import LoggedSlates

    folder = tmp_path / "log"
    config = ServingConfig(exploration=ExplorationConfig(temperature=0.5), log_file_bytes=20_000, log_max_files=2)
    recommender = Recommender.load(flat_export, config, log_dir=folder)
    for seed in range(60):
        response = recommender.recommend(RecommendRequest(user_id="u1", k=3, seed=seed))
        recommender.feedback(response["request_id"], response["items"][0]["item_id"], 1.0)
    late = recommender.recommend(RecommendRequest(user_id="u1", k=3, seed=99))
    recommender.log.close()
    assert len(list(folder.glob("impressions-*.jsonl"))) == 2 and "deleting the oldest" in caplog.text
    caplog.clear()
    rows = recommender.export.item_rows
    kept = read_log(folder, rows)  # no click lost its slate
    assert 0 < len(kept.clicks) < 60 and len(kept.impressions) == len(kept.clicks) + 1
    training_line = caplog.records[-1].getMessage()
    LoggedSlates.from_log(folder)
    assert caplog.records[-1].getMessage() == training_line  # OPE reports what training reads, in the same words
    assert f"{len(kept.impressions)} slates" in training_line and f"({len(kept.clicks)} clicks)" in training_line
    # A click that comes after its slate's file was retired is refused, or skipped and counted when asked.
    Recommender.load(flat_export, config, log_dir=folder).log.log_feedback(
        Feedback(late["request_id"], late["items"][0]["item_id"], 1.0, "t"))
    for path in folder.glob("impressions-*.jsonl"):
        lines = path.read_text().splitlines()
        path.write_text("".join(line + "\n" for line in lines if late["request_id"] not in line))
    with pytest.raises(ValueError, match="has no impression in .*skip_orphans trains without such clicks"):
        read_log(folder, rows)
    skipped = read_log(folder, rows, skip_orphans=True)
    assert len(skipped.clicks) == len(kept.clicks)
    assert "1 rewards (1 clicks) name slates the folder does not hold" in caplog.records[-1].getMessage()
