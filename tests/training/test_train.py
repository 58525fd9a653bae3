"""train.py end to end on a tiny model and tiny data: fit, test, checkpoint contents, resume, configs."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import yaml

from recsys_tt.model.weights import is_base_weight
from recsys_tt.training.lightning_cli import main
from tests.helpers import TINY_TEMPLATES, undocumented_options
from tests.helpers import train_args as _args

CONFIGS = sorted(p for p in Path(__file__).parents[2].joinpath("configs").glob("*.yaml")
                 if not p.name.startswith("serve"))  # serving configs: tests/test_serving.py


class StopAtStep(pl.Callback):
    """Simulates a job killed after ``step`` optimizer steps (its last checkpoint written, as at a crash)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        trainer.should_stop = trainer.global_step >= self.step


def _trainable(cli) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in cli.model.named_parameters() if v.requires_grad}


@pytest.mark.parametrize("user_input, memory, negatives", [
    ("item_vectors", 0, "batch"), ("text", 0, "batch"), ("item_vectors", 16, "batch"), ("item_vectors", 0, "catalog"),
    ("text", 0, "catalog")])
def test_fit_then_test_reports_full_ranking_metrics(tmp_path, tiny_dataset, tiny_bert, user_input, memory, negatives):
    cli = main(_args(tmp_path, tiny_dataset, tiny_bert, 4, "--model.tower.user_input", user_input,
                     "--model.loss.memory_size", str(memory), "--model.loss.negatives", negatives))
    assert (cli.model.loss.memory is None) == (memory == 0)
    if memory:
        assert len(cli.model.loss.memory[1]) == memory  # filled by earlier batches, capped
    metrics = cli.trainer.callback_metrics
    # one target per user: its MRR term 1/(r+1) <= its NDCG term 1/log2(r+2) <= its hit
    assert float(metrics["test/mrr@10"]) <= float(metrics["test/ndcg@10"]) <= float(metrics["test/recall@10"])
    assert float(metrics["test/recall@20"]) == 1.0  # 12 items, 5 seen: the target always ranks within 20
    run = tmp_path / "ml100k_minilm" / "version_0"
    assert (run / "curves.png").stat().st_size > 1000
    logged = pd.read_csv(run / "metrics.csv")
    assert logged["val/ndcg@10"].notna().sum() == 2  # validated at steps 2 and 4
    losses = logged["train/loss"].dropna()
    assert len(losses) == 4 and losses.map(math.isfinite).all()


def test_checkpoint_holds_trainable_weights_and_config_only(tmp_path, tiny_dataset, tiny_bert):
    main(_args(tmp_path, tiny_dataset, tiny_bert, 2))
    ckpt = torch.load(tmp_path / "ml100k_minilm/version_0/checkpoints/last.ckpt", weights_only=True)
    keys = list(ckpt["state_dict"])
    assert not any(is_base_weight(k) for k in keys)
    assert any("lora_A.user" in k for k in keys) and any("lora_B.item" in k for k in keys)
    assert "model.item_ids.weight" in keys and "loss.log_temperature" in keys
    assert ckpt["hyper_parameters"]["tower"]["backbone"] == tiny_bert
    assert ckpt["datamodule_hyper_parameters"]["interactions"] == tiny_dataset["interactions"]


@pytest.mark.filterwarnings("ignore:.*exists and is not empty")  # the test reruns into its own run folder
def test_resumed_run_matches_uninterrupted_run(tmp_path, tiny_dataset, tiny_bert):
    full = main(_args(tmp_path / "full", tiny_dataset, tiny_bert, 8))
    kill = '{"class_path": "test_train.StopAtStep", "init_args": {"step": 5}}'
    main(_args(tmp_path / "cut", tiny_dataset, tiny_bert, 8, "--trainer.callbacks+", kill, "--test_after_fit", "false"))
    last = tmp_path / "cut/ml100k_minilm/version_0/checkpoints/last.ckpt"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = main(_args(tmp_path / "cut", tiny_dataset, tiny_bert, 8, "--ckpt_path", str(last)))
    assert not [w for w in caught if "not resumable" in str(w.message)]  # Lightning knows our batches resume
    assert torch.load(last, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["seed"] == 0
    assert resumed.trainer.global_step == full.trainer.global_step == 8
    a, b = _trainable(full), _trainable(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    for name in ("test/ndcg@10", "test/mrr@20"):
        expected = float(full.trainer.callback_metrics[name])
        assert float(resumed.trainer.callback_metrics[name]) == pytest.approx(expected, abs=1e-5)


def test_seed_everything_also_seeds_the_data_order_and_dropout(tmp_path, tiny_dataset, tiny_bert):
    cli = main(_args(tmp_path, tiny_dataset, tiny_bert, 2, "--seed_everything", "3", "--test_after_fit", "false"))
    assert cli.datamodule.hparams.seed == cli.model.hparams.seed == 3
    saved = yaml.safe_load((tmp_path / "ml100k_minilm/version_0/config.yaml").read_text())
    assert saved["data"]["seed"] == saved["model"]["seed"] == 3
    apart = main(_args(tmp_path / "apart", tiny_dataset, tiny_bert, 1, "--seed_everything", "3", "--data.seed", "5",
                       "--model.seed", "5", "--test_after_fit", "false"))
    assert apart.datamodule.hparams.seed == 5


@pytest.mark.filterwarnings("ignore:.*exists and is not empty")  # the test reruns into its own run folder
def test_testing_after_fit_uses_the_best_validation_checkpoint(tmp_path, tiny_dataset, tiny_bert):
    args = _args(tmp_path, tiny_dataset, tiny_bert, 6, "--model.lr", "0.05")  # the config lists no such callback
    fitted = main(args)
    chosen = fitted.config_init["fit"]["best_checkpoint"]
    logged = pd.read_csv(tmp_path / "ml100k_minilm/version_0/metrics.csv")["val/ndcg@10"].dropna()
    assert len(logged) == 3 and float(chosen.best_model_score) == pytest.approx(logged.max())
    assert fitted.trainer.ckpt_path == chosen.best_model_path
    tested = main(["test", *args[1:], "--ckpt_path", chosen.best_model_path])
    for name in ("test/ndcg@10", "test/recall@10"):
        expected = float(tested.trainer.callback_metrics[name])
        assert float(fitted.trainer.callback_metrics[name]) == pytest.approx(expected, abs=1e-6), name
    final = main([*args, "--test_on", "last", "--trainer.logger.init_args.version", "1"])
    assert final.trainer.ckpt_path is None
    with pytest.raises(ValueError, match=r"val/ndcg@10 is not logged.*val/ndcg@5"):
        main([*args, "--model.eval_ks", "[5]", "--trainer.logger.init_args.version", "2"])


def test_lora_training_leaves_the_backbone_unchanged(tmp_path, tiny_dataset, tiny_bert):
    from recsys_tt.model.backbone import load_model

    cli = main(_args(tmp_path, tiny_dataset, tiny_bert, 3, "--test_after_fit", "false"))
    original = load_model(tiny_bert).state_dict()
    trained = {k.split("base_model.model.", 1)[1].replace(".base_layer", ""): v
               for k, v in cli.model.model.encoder.state_dict().items() if "lora_" not in k}
    assert set(trained) == {k for k in original if not k.startswith("pooler.")}  # towers never read the pooler
    assert all(torch.equal(v, original[k]) for k, v in trained.items())


def test_data_with_another_catalog_is_refused(tmp_path, tiny_dataset, tiny_bert):
    from recsys_tt.data.text import TextTemplates
    from recsys_tt.model.towers import TowerConfig
    from recsys_tt.training.datamodule import RecDataModule
    from recsys_tt.training.module import TwoTowerModule

    model = TwoTowerModule(num_items=5, tower=TowerConfig(backbone=tiny_bert))
    data = RecDataModule("files", tiny_dataset["interactions"], tiny_dataset["items"], backbone=tiny_bert,
                         templates=TextTemplates(item=TINY_TEMPLATES["item"]), batch_size=4)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="12 items but the model was built for 5"):
        trainer.fit(model, datamodule=data)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(config), "--print_config"])
    assert done.value.code == 0
    assert "tower:" in capsys.readouterr().out


def test_help_describes_every_tower_loss_and_data_option(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    assert "--model.tower.lora_r" in text and "--model.loss.negatives" in text
    assert undocumented_options(text, ("--model.tower.", "--model.loss.", "--data.")) == []


def test_predict_is_not_offered(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "{fit,validate,test}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["predict"])
    assert done.value.code != 0


def test_training_logs_plain_progress_lines_with_a_whole_run_eta(tmp_path, tiny_dataset, tiny_bert, caplog):
    caplog.set_level("INFO", logger="recsys_tt")
    cli = main(_args(tmp_path, tiny_dataset, tiny_bert, 3, "--progress_log.every_s", "1e-9", "--test_after_fit",
                     "false"))
    lines = [r.getMessage() for r in caplog.records  # ProgressLog's lines (PlotCurves logs in the same module)
             if r.name == "recsys_tt.training.callbacks" and r.funcName == "on_train_batch_end"]
    assert [line.split(" (")[0] for line in lines] == ["step 1/3", "step 2/3", "step 3/3"]
    assert all(re.search(r"loss \d+\.\d{4}, \d+ targets/s, elapsed 0:00:\d\d, ETA 0:00:\d\d", line) for line in lines)
    test_users = len(cli.datamodule.test_dataloader().dataset)  # after the validation at step 2, the test's ETA:
    assert [line.endswith(f", then about 0:00:00 to test {test_users} users") for line in lines] == [False, False, True]
    validations = [r.getMessage() for r in caplog.records if r.funcName == "on_validation_end"]
    assert len(validations) == 1  # val_check_interval 2 of 3 steps
    ndcg = float(pd.read_csv(tmp_path / "ml100k_minilm" / "version_0" / "metrics.csv")["val/ndcg@10"].dropna().iloc[0])
    assert re.fullmatch(rf"validation at step 2: NDCG@10 {ndcg:.4f}, Recall@10 \d\.\d{{4}} \(best {ndcg:.4f} at step "
                        r"2\)", validations[0])
    run = tmp_path / "ml100k_minilm" / "version_0"
    assert any(r.getMessage().startswith(f"Run folder: {run} ") and f"--checkpoint {run} --out exports/ml100k_minilm"
               in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="every_s must be positive"):
        main(_args(tmp_path, tiny_dataset, tiny_bert, 3, "--progress_log.every_s", "0"))



@pytest.mark.parametrize("config", ["ml100k_minilm", "ml1m_minilm", "beauty_minilm", "games_minilm"])
def test_shipped_cpu_configs_stop_once_validation_stops_improving(config):
    import yaml

    callbacks = yaml.safe_load(Path(f"configs/{config}.yaml").read_text())["trainer"]["callbacks"]
    stoppers = [c["init_args"] for c in callbacks if c["class_path"].endswith("EarlyStopping")]
    assert stoppers == [{"monitor": "val/ndcg@10", "mode": "max", "patience": 3}]


def test_a_run_stops_early_and_says_so(tmp_path, tiny_dataset, tiny_bert, caplog):
    caplog.set_level("INFO", logger="recsys_tt")
    never_improves = ('[{"class_path": "pytorch_lightning.callbacks.EarlyStopping", "init_args": {"monitor": '
                      '"val/ndcg@10", "mode": "max", "patience": 1, "min_delta": 2.0}}]')
    cli = main(_args(tmp_path, tiny_dataset, tiny_bert, 20, "--trainer.callbacks+", never_improves,
                     "--test_after_fit", "false"))
    assert cli.trainer.global_step == 4  # validations at steps 2 and 4; the second is the first without improvement
    assert any(re.fullmatch(r"Stopped early at step 4 of 20: val/ndcg@10 has not improved on -?\d\.\d{4} in 1 "
                            r"validations \(EarlyStopping.patience\)\.", r.getMessage()) for r in caplog.records)

def test_sigterm_is_a_failure_that_says_where_to_resume(tmp_path, tiny_dataset, tiny_bert):
    import subprocess
    import sys

    from tests.helpers import clean_env

    sigterm = '{"class_path": "tests.helpers.SigtermAt", "init_args": {"step": 2}}'
    args = _args(tmp_path, tiny_dataset, tiny_bert, 6, "--trainer.callbacks+", sigterm)
    env = {**clean_env(), "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run([sys.executable, "train.py", *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 143, done.stderr[-2000:]
    last = tmp_path / "ml100k_minilm/version_0/checkpoints/last.ckpt"
    assert "Stopped by SIGTERM" in done.stderr and f"--ckpt_path {last} " in done.stderr, done.stderr[-2000:]
    assert "test/ndcg@10" not in done.stdout  # no test of a half-trained model
    assert last.exists()  # what the message says to resume


def test_fast_dev_run_trains_and_tests_one_batch_without_writing_a_run(tmp_path, tiny_dataset, tiny_bert):
    args = [a for a in _args(tmp_path, tiny_dataset, tiny_bert, 3) if a != "--trainer.max_steps"]
    args.remove("3")
    cli = main([*args, "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path / "root")])
    assert cli.trainer.global_step == 1 and "test/ndcg@10" in cli.trainer.callback_metrics
    assert not (tmp_path / "ml100k_minilm").exists()  # Lightning's dummy logger writes nothing, curves included


class _RunsCode:
    """Unpickling this runs code: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_an_unsafe_ckpt_path_is_refused_in_one_line_before_anything_runs(tmp_path, tiny_dataset, tiny_bert,
                                                                       subcommand):
    evil, marker = tmp_path / "evil.ckpt", tmp_path / "ran"
    torch.save({"state_dict": {}, "payload": _RunsCode(marker)}, evil)
    args = _args(tmp_path, tiny_dataset, tiny_bert, 2, "--ckpt_path", str(evil))
    with pytest.raises(ValueError, match="not a checkpoint torch can read safely") as refused:
        main([subcommand, *args[1:]])
    assert "weights_only=False" not in str(refused.value) and "\n" not in str(refused.value)
    assert not marker.exists()


@pytest.mark.parametrize("bad", [["--config", "configs/no_such.yaml"], ["--config", "configs/smoke.yaml",
                                                                         "--model.no_such_option", "1"]])
def test_a_bad_argument_on_the_command_line_is_two_lines_not_the_usage(bad):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "train.py", "fit", *bad], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("error: ") and "fit --help" in lines[1], done.stderr[-2000:]


@pytest.mark.filterwarnings("ignore:.*exists and is not empty")  # the test reruns into its own run folder
def test_bf16_training_on_a_cpu_without_amx_says_float32_is_faster(tmp_path, tiny_dataset, tiny_bert, caplog,
                                                                  monkeypatch):
    from recsys_tt.training import lightning_cli

    assert lightning_cli.cpu_has_amx("flags\t: fpu avx2 avx512_bf16\n") is False
    assert lightning_cli.cpu_has_amx("flags\t: fpu amx_bf16 amx_tile\n") is True
    assert lightning_cli.cpu_has_amx("processor : 0\n") is None
    monkeypatch.setattr(lightning_cli, "cpu_has_amx", lambda: False)
    caplog.set_level("WARNING", logger="recsys_tt.train")
    main(_args(tmp_path, tiny_dataset, tiny_bert, 1, "--trainer.precision", "bf16-mixed", "--test_after_fit", "false"))
    assert any("CPU without AMX" in r.getMessage() for r in caplog.records)
    caplog.clear()
    main(_args(tmp_path, tiny_dataset, tiny_bert, 1, "--test_after_fit", "false"))  # 32-true: nothing to say
    assert not any("CPU without AMX" in r.getMessage() for r in caplog.records)


def test_lightning_prints_nothing_a_user_cannot_act_on(tmp_path, tiny_dataset, tiny_bert, capfd, caplog):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(_args(tmp_path, tiny_dataset, tiny_bert, 1, "--trainer.precision", "bf16-mixed",
                   "--trainer.enable_model_summary", "true"))
    printed = capfd.readouterr()
    assert "Tip" not in printed.out + printed.err + caplog.text  # a hosted logger's advertising
    assert "Loading weights" not in printed.err  # transformers' bar for a sub-second load
    noise = [str(w.message) for w in caught if "LeafSpec" in str(w.message) or "model summary" in str(w.message)]
    assert not noise
