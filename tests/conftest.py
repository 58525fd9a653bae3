"""Shared fixtures: a tiny BERT built from a config (no weights downloaded) and a tiny interaction dataset."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertModel

from recsys_tt.cli import quiet_library_noise
from recsys_tt.model.backbone import load_tokenizer
from tests.helpers import CUT, train_args, write_tiny_dataset

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer, 32-wide BERT with random weights and MiniLM's tokenizer, saved as a local model folder."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = load_tokenizer("minilm")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(autouse=True, scope="session")
def _no_pytest_arguments():
    """Entry points called by tests, session fixtures' included, see no pytest arguments as theirs (a test that
    sets sys.argv itself does so with monkeypatch, which restores this)."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    yield
    sys.argv = argv


@pytest.fixture(autouse=True)
def _quiet_as_from_the_command_line():
    """Libraries' noise is silenced as every command line silences it (pytest resets warning filters per test)."""
    quiet_library_noise()


@pytest.fixture
def tiny_dataset(tmp_path) -> dict[str, str]:
    return write_tiny_dataset(tmp_path)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_bert):
    """A 4-step tiny-BERT training run on the tiny dataset: (the tested checkpoint, its test metrics)."""
    from recsys_tt.training.lightning_cli import main

    root = tmp_path_factory.mktemp("trained")
    paths = write_tiny_dataset(root / "data")
    cli = main(train_args(root, paths, tiny_bert, 4, "--model.eval_ks", "[3,5]",
                          "--best_checkpoint.monitor", "val/ndcg@5"))
    return Path(cli.trainer.ckpt_path), cli.trainer.callback_metrics


@pytest.fixture(scope="session")
def flat_export(trained, tmp_path_factory):
    from recsys_tt.training.export import export_model

    return export_model(trained[0], tmp_path_factory.mktemp("exports") / "flat", report_users=8)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A 2-layer decoder (Llama architecture) with random weights, saved with a local tokenizer."""
    from transformers import LlamaConfig, LlamaModel

    folder = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = load_tokenizer("minilm")
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    LlamaModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)



@pytest.fixture(scope="session")
def before_export(tmp_path_factory, tiny_bert):
    """A tiny model of the world before CUT, exported: (export folder, the tiny dataset's paths)."""
    from recsys_tt.training.export import export_model
    from recsys_tt.training.lightning_cli import main

    root = tmp_path_factory.mktemp("arrivals")
    paths = write_tiny_dataset(root / "data")
    before = pd.Timestamp(CUT, unit="s").isoformat()
    cli = main(train_args(root, paths, tiny_bert, 3, "--data.before", before, "--data.min_history", "0",
                          "--model.eval_ks", "[3,5]",
                          "--best_checkpoint.monitor", "val/ndcg@5"))
    return export_model(cli.trainer.ckpt_path, root / "export", report_users=4), paths
