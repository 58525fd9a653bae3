"""The GPU check script, rehearsed on the CPU with a tiny random decoder (the GPU run itself is never a test)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import gpu_check  # noqa: E402

pytestmark = pytest.mark.slow  # real MovieLens-100K through the GPU config


def test_gpu_check_times_training_and_reproduces_its_metrics_offline(tmp_path):
    gpu_check.main(layers=1, width=64, steps=2, warmup=1, batch_size=32, accelerator="cpu", out=str(tmp_path))
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    train, offline = report["train"], report["export_score"]
    assert train["steps_per_s"] > 0 and train["targets_per_s"] > train["steps_per_s"]
    assert train["precision"] == "bf16-mixed" and train["gradient_checkpointing"] is True
    assert offline["offline_ndcg@10"] == pytest.approx(train["test_ndcg@10"], abs=1e-6)
    assert offline["ann_recall_at_10"] == 1.0
    assert not torch.distributed.is_initialized()  # the one-process DDP group is gone, its port free
