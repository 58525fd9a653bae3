from __future__ import annotations

import pytest
import torch

from recsys_tt.data.text import tokenize_table
from recsys_tt.model.backbone import load_tokenizer
from recsys_tt.model.towers import TowerConfig
from recsys_tt.training.module import TwoTowerModule


@pytest.fixture
def module(tiny_bert) -> TwoTowerModule:
    torch.manual_seed(0)
    module = TwoTowerModule(num_items=6, tower=TowerConfig(backbone=tiny_bert), fresh_items=2)
    module.item_tokens = tokenize_table(load_tokenizer(tiny_bert), [f"movie {i} about thing {i}" for i in range(6)], 16)
    with torch.no_grad():
        module.model.item_ids.weight.normal_()
    return module.eval()  # no dropout: cached and fresh encodings of an item must agree


def test_cached_negatives_equal_fresh_encodings_and_fresh_ones_carry_gradients(module):
    items = torch.tensor([0, 2, 3, 5])
    module.item_text_cache = module.encoder.item_text()
    mixed = module.batch_item_vectors(items)
    full = module.model.add_item_ids(module.model.encode_item_text(**module._item_tokens(items)), items)
    assert torch.allclose(mixed, full, atol=1e-5)
    mixed.sum().backward()
    lora = [p for n, p in module.named_parameters() if "lora_B.item" in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    assert (module.model.item_ids.weight.grad[items].abs().sum(1) > 0).all()  # every column's id vector trains


def test_without_a_cache_every_item_is_encoded(module):
    items = torch.tensor([1, 4, 5])
    vectors = module.batch_item_vectors(items)
    assert vectors.shape == (3, 32) and torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_nonsense_optimisation_settings_are_refused(tiny_bert):
    with pytest.raises(ValueError, match="fresh_items"):
        TwoTowerModule(num_items=6, tower=TowerConfig(backbone=tiny_bert), fresh_items=0)
    with pytest.raises(ValueError, match="eval_ks"):
        TwoTowerModule(num_items=6, tower=TowerConfig(backbone=tiny_bert), eval_ks=(0,))


def test_catalog_cache_is_encoded_only_when_a_batch_reads_it(tiny_bert):
    module = TwoTowerModule(num_items=6, tower=TowerConfig(backbone=tiny_bert, user_input="text"), fresh_items=3)
    module.item_tokens = tokenize_table(load_tokenizer(tiny_bert), [f"movie {i}" for i in range(6)], 8)
    module.on_train_batch_start({"items": torch.tensor([0, 1, 2])}, 0)  # all three are encoded fresh
    assert module.item_text_cache is None
    module.on_train_batch_start({"items": torch.tensor([0, 1, 2, 3])}, 1)  # one is a cached negative
    assert module.item_text_cache is not None and module.item_text_cache.shape == (6, 32)


def test_catalog_negatives_make_every_item_a_column_with_the_same_targets(tiny_bert):
    from recsys_tt.model.loss import LossConfig

    batch = {"items": torch.tensor([1, 4, 5]), "positive": torch.tensor([[2, 0, -1], [1, 1, 0]])}
    by_batch = TwoTowerModule(num_items=6, tower=TowerConfig(backbone=tiny_bert))
    by_catalog = TwoTowerModule(num_items=6, tower=TowerConfig(backbone=tiny_bert),
                                loss=LossConfig(negatives="catalog"))
    columns, positive = by_batch._columns(batch)
    all_columns, all_positive = by_catalog._columns(batch)
    assert all_columns.tolist() == list(range(6))
    assert torch.equal(all_positive >= 0, positive >= 0)
    assert torch.equal(all_columns[all_positive[positive >= 0]], columns[positive[positive >= 0]])


def test_a_frozen_item_tower_reads_every_text_vector_from_the_cache(tiny_bert):
    module = TwoTowerModule(num_items=6, tower=TowerConfig(backbone=tiny_bert, train_item_adapter=False), fresh_items=2)
    module.item_tokens = tokenize_table(load_tokenizer(tiny_bert), [f"movie {i}" for i in range(6)], 8)
    module.item_text_cache = module.encoder.item_text()
    items = torch.tensor([0, 2, 3, 5])
    assert torch.equal(module.batch_item_text(items), module.item_text_cache[items])  # no item encoded again


def test_a_frozen_item_tower_evaluates_on_its_cache_as_on_a_fresh_encoding(tiny_bert):
    module = TwoTowerModule(num_items=6, tower=TowerConfig(backbone=tiny_bert, train_item_adapter=False))
    module.item_tokens = tokenize_table(load_tokenizer(tiny_bert), [f"movie {i}" for i in range(6)], 8)
    fresh_text, fresh_vectors = module.encoder.catalog_tensors()
    module.item_text_cache = module.encoder.item_text()
    module.on_validation_epoch_start()
    assert module.catalog_text is module.item_text_cache  # not encoded again
    assert torch.allclose(module.catalog_text, fresh_text) and torch.allclose(module.catalog_vectors, fresh_vectors)

