"""train.py under DDP with 2 CPU processes (gloo) against the same run in one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel

from recsys_tt.model.backbone import load_tokenizer
from tests.helpers import clean_env, train_args

ROOT = Path(__file__).parents[2]


@pytest.fixture
def dropout_free_bert(tiny_bert, tmp_path) -> str:
    """The tiny BERT without dropout, so both runs see the same forward passes whatever the rank seeds."""
    config = AutoConfig.from_pretrained(tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    folder = tmp_path / "bert"
    AutoModel.from_pretrained(tiny_bert, config=config).save_pretrained(folder)
    load_tokenizer(tiny_bert).save_pretrained(folder)
    return str(folder)


def _run(root: Path, paths: dict, backbone: str, devices: int) -> dict[str, torch.Tensor]:
    """Trains 3 steps with a global batch of 4 text users; returns the last checkpoint's trainable weights."""
    args = train_args(root, paths, backbone, 3, "--model.tower.user_input", "text", "--model.tower.lora_dropout", "0",
                      "--model.fresh_items", "null", "--trainer.accelerator", "cpu",
                      "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto",
                      "--data.batch_size", str(4 // devices), "--test_after_fit", "false")
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = root / "ml100k_minilm/version_0/checkpoints/last.ckpt"
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def test_two_process_ddp_training_matches_one_process(tmp_path, dropout_free_bert):
    from tests.helpers import write_tiny_dataset

    paths = write_tiny_dataset(tmp_path / "data")
    one = _run(tmp_path / "one", paths, dropout_free_bert, 1)
    two = _run(tmp_path / "two", paths, dropout_free_bert, 2)
    assert one.keys() == two.keys()
    lora = [k for k in one if "lora_B" in k]  # zero at the start, so their values are what training did
    moved = torch.cat([one[k].flatten() for k in lora]).norm()
    apart = torch.cat([(one[k] - two[k]).flatten() for k in lora]).norm()
    assert moved > 0 and apart < 0.001 * moved, f"DDP weights differ by {apart:.3g} after updates of {moved:.3g}"
