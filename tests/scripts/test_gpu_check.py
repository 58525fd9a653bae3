"""The GPU check script, rehearsed on the CPU with a tiny random decoder (the GPU run itself is never a test)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import load_script

pytestmark = pytest.mark.slow  # real MovieLens-100K through the GPU config


def test_gpu_check_times_training_and_reproduces_its_metrics_offline(tmp_path):
    gpu_check = load_script("gpu_check")
    gpu_check.main(rows=["decoder DDP, checkpointing", "decoder FSDP, checkpointing"], layers=1, width=64, steps=2,
                   warmup=1, accelerator="cpu", overrides=["--data.batch_size", "32"], out=str(tmp_path))
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    train, offline = report["rows"]["decoder DDP, checkpointing"], report["export_score"]
    assert train["steps_per_s"] > 0 and train["targets_per_s"] > train["steps_per_s"]
    assert train["gflop_per_target"] > 0 and 0 < train["peak_share"] < 1
    assert train["precision"] == "bf16-mixed" and train["gradient_checkpointing"] is True
    assert offline["offline_ndcg@10"] == pytest.approx(train["test_ndcg@10"], abs=1e-6)
    assert offline["ann_recall_at_10"] == 1.0
    # FSDP needs a GPU: on the CPU its row reports the failure and the check goes on
    assert "exit code 1" in report["rows"]["decoder FSDP, checkpointing"]["error"]
    assert not torch.distributed.is_initialized()


def test_gpu_check_refuses_an_unknown_row(tmp_path):
    with pytest.raises(ValueError, match="Unknown rows"):
        load_script("gpu_check").main(rows=["nope"], accelerator="cpu", out=str(tmp_path))
