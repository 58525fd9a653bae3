from __future__ import annotations

import pytest
import torch

from recsys_tt.model.backbone import default_lora_targets, load_model
from recsys_tt.model.pooling import pool
from recsys_tt.model.towers import TowerConfig, TwoTower
from recsys_tt.model.weights import is_base_weight


def _tower(tiny_bert, **overrides) -> TwoTower:
    config = TowerConfig(backbone=tiny_bert, **overrides)
    return TwoTower.from_config(config, num_items=6)


def _tokens(n=4, length=5):
    ids = torch.randint(1000, 2000, (n, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, 3:] = 0
    return ids, mask


def test_pooling_modes():
    hidden = torch.arange(12.0).reshape(1, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0]])
    assert pool(hidden, mask, "cls").tolist() == [[0.0, 1.0, 2.0]]
    assert pool(hidden, mask, "mean").tolist() == [[3.0, 4.0, 5.0]]
    assert pool(hidden, mask, "last").tolist() == [[6.0, 7.0, 8.0]]
    left_padded = torch.tensor([[0, 1, 1, 1]])
    assert pool(hidden, left_padded, "last").tolist() == [[9.0, 10.0, 11.0]]


def test_outputs_are_unit_vectors_of_the_projection_size(tiny_bert):
    tower = _tower(tiny_bert, projection_dim=16)
    ids, mask = _tokens()
    items = tower.encode_items(ids, mask, torch.arange(4))
    users = tower.encode_user_text(ids, mask)
    assert items.shape == users.shape == (4, 16)
    assert torch.allclose(items.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_training_changes_adapters_and_heads_but_not_the_base(tiny_bert):
    tower = _tower(tiny_bert, projection_dim=8)
    base = {k: v.clone() for k, v in tower.state_dict().items() if is_base_weight(k)}
    trainable = {k: v.clone() for k, v in tower.named_parameters() if v.requires_grad}
    assert base and trainable and not any(is_base_weight(k) for k in trainable)
    optimizer = torch.optim.SGD([p for p in tower.parameters() if p.requires_grad], lr=1.0)
    ids, mask = _tokens()
    for _ in range(2):  # the second step moves LoRA A too (B starts at zero)
        loss = -(tower.encode_user_text(ids, mask) * tower.encode_items(ids, mask, torch.arange(4))).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    state = tower.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base.items())
    changed = {k for k, v in tower.named_parameters() if v.requires_grad and not torch.equal(v, trainable[k])}
    assert any("lora_A.user" in k for k in changed) and any("lora_A.item" in k for k in changed)


def test_towers_have_separate_adapters_unless_shared(tiny_bert):
    separate = _tower(tiny_bert)
    shared = _tower(tiny_bert, shared_adapter=True)
    assert any(".user." in n for n, _ in separate.named_parameters())
    assert not any(".user." in n for n, _ in shared.named_parameters())
    ids, mask = _tokens()
    with torch.no_grad():  # make the adapters non-trivial so the towers can differ
        for name, p in separate.named_parameters():
            if "lora_B" in name:
                p.normal_()
    separate.eval()
    items = separate.encode_items(ids, mask)
    users = separate.encode_user_text(ids, mask)
    assert not torch.allclose(items, users, atol=1e-4)


def test_unseen_items_fall_back_to_text(tiny_bert):
    tower = _tower(tiny_bert, item_id_embeddings=True)
    tower.eval()
    with torch.no_grad():
        tower.item_ids.weight.normal_()
        tower.seen_items[2] = False
    ids, mask = _tokens(n=1)
    text_only = tower.encode_items(ids, mask)
    assert torch.allclose(tower.encode_items(ids, mask, torch.tensor([2])), text_only)  # unseen in training
    assert torch.allclose(tower.encode_items(ids, mask, torch.tensor([9])), text_only)  # added after training
    assert not torch.allclose(tower.encode_items(ids, mask, torch.tensor([1])), text_only)


def test_history_user_tower_reads_item_vectors(tiny_bert):
    tower = _tower(tiny_bert, user_input="item_vectors", projection_dim=8)
    tower.eval()
    prefix = torch.tensor([[101, 2000, 102], [101, 2001, 102]])
    history = torch.nn.functional.normalize(torch.randn(2, 4, 8), dim=-1)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    users = tower.encode_user_history(prefix, torch.ones_like(prefix), history, mask)
    assert users.shape == (2, 8)
    changed = history.clone()
    changed[1, 3] = 0.0  # a padded position must not matter
    assert torch.allclose(tower.encode_user_history(prefix, torch.ones_like(prefix), changed, mask)[1], users[1],
                          atol=1e-5)
    changed[1, 0] = -history[1, 0]  # a real one must
    assert not torch.allclose(tower.encode_user_history(prefix, torch.ones_like(prefix), changed, mask)[1], users[1],
                              atol=1e-5)


def test_default_lora_targets_per_architecture(tiny_bert):
    from transformers import LlamaConfig, LlamaModel

    assert default_lora_targets(load_model(tiny_bert)) == ["query", "value"]
    llama = LlamaModel(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1))
    assert "q_proj" in default_lora_targets(llama) and "down_proj" in default_lora_targets(llama)


def test_all_linear_adapts_every_block_layer_and_never_the_unused_pooler(tiny_bert):
    adapted = {n.split(".lora_A")[0] for n, _ in _tower(tiny_bert, lora_targets="all-linear").named_parameters()
               if ".lora_A.item" in n}
    assert any(n.endswith("key") for n in adapted) and any(n.endswith("intermediate.dense") for n in adapted)
    assert not any("pooler" in n for n in adapted)


@pytest.mark.parametrize("bad", [dict(lora_r=0), dict(projection_dim=-2), dict(lora_dropout=1.5),
                                 dict(bucket_rows=0)])
def test_nonsense_tower_settings_are_refused(bad):
    with pytest.raises(ValueError):
        TowerConfig(**bad)


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_llama"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_history_positions_never_see_later_items(request, backbone, pooling):
    tower = _tower(request.getfixturevalue(backbone), user_input="item_vectors", user_pooling=pooling)
    tower.eval()
    prefix = torch.tensor([[101, 2000, 102]])
    history = torch.nn.functional.normalize(torch.randn(1, 5, 32), dim=-1)
    mask = torch.ones(1, 5, dtype=torch.long)
    states = tower.encode_user_history(prefix, torch.ones_like(prefix), history, mask, every_position=True)
    changed = history.clone()
    changed[0, 3:] = -changed[0, 3:]
    after = tower.encode_user_history(prefix, torch.ones_like(prefix), changed, mask, every_position=True)
    assert states.shape == (1, 6, 32)  # the profile alone, then after each of the 5 items
    assert torch.allclose(states[0, :4], after[0, :4], atol=1e-5)  # the profile and items 0..2 cannot see 3, 4
    assert not torch.allclose(states[0, 4:], after[0, 4:], atol=1e-5)
    final = tower.encode_user_history(prefix, torch.ones_like(prefix), history, mask)
    assert torch.allclose(final[0], states[0, -1], atol=1e-5)  # the user vector is the last position's
    # A new user with no items (padded profile, empty history) is served the state trained on the profile alone.
    padded, padded_mask = torch.tensor([[101, 2000, 102, 0]]), torch.tensor([[1, 1, 1, 0]])
    new_user = tower.encode_user_history(padded, padded_mask, history[:, :1], torch.zeros(1, 1, dtype=torch.long))
    assert torch.allclose(new_user[0], states[0, 0], atol=1e-5)


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_llama"])
def test_a_history_user_does_not_depend_on_the_profiles_padded_beside_it(request, backbone):
    tower = _tower(request.getfixturevalue(backbone), user_input="item_vectors")
    tower.eval()
    history = torch.nn.functional.normalize(torch.randn(2, 4, 32), dim=-1)
    alone = tower.encode_user_history(torch.tensor([[101, 2000, 102]]), torch.ones(1, 3, dtype=torch.long),
                                      history[:1], torch.ones(1, 4, dtype=torch.long))
    # Beside a longer profile, this user's 3 profile tokens are padded to 6 before its history starts.
    prefix = torch.tensor([[101, 2000, 102, 0, 0, 0], [101, 2001, 2002, 2003, 2004, 102]])
    prefix_mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    batched = tower.encode_user_history(prefix, prefix_mask, history, torch.ones(2, 4, dtype=torch.long))
    assert torch.allclose(batched[0], alone[0], atol=1e-5)


def test_cls_pooling_cannot_summarise_a_causal_history():
    with pytest.raises(ValueError, match="cls"):
        TowerConfig(user_input="item_vectors", pooling="cls")
    with pytest.raises(ValueError, match="cls"):
        TowerConfig(user_input="item_vectors", user_pooling="cls")
    assert TowerConfig(user_input="item_vectors", pooling="cls", user_pooling="last").pooling_of("item") == "cls"


def test_user_pooling_changes_the_user_tower_only(tiny_bert):
    mean, last = _tower(tiny_bert), _tower(tiny_bert, user_pooling="last")
    last.load_state_dict(mean.state_dict())
    mean.eval(), last.eval()
    ids, mask = _tokens()
    assert torch.equal(mean.encode_item_text(ids, mask), last.encode_item_text(ids, mask))
    prefix, history = torch.tensor([[101, 2000, 102]]), torch.nn.functional.normalize(torch.randn(1, 4, 32), dim=-1)
    users = [t.encode_user_history(prefix, torch.ones_like(prefix), history, torch.ones(1, 4, dtype=torch.long),
                                   every_position=True) for t in (mean, last)]
    assert not torch.allclose(users[0][0, -1], users[1][0, -1], atol=1e-3)


def test_length_bucketed_encoding_equals_one_padded_batch(tiny_bert):
    lengths = [9, 2, 7, 3, 9, 5, 1, 4]
    ids = torch.randint(1000, 2000, (len(lengths), 12), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(12) < torch.tensor(lengths)[:, None]).long()
    bucketed, padded = _tower(tiny_bert, bucket_rows=3).eval(), _tower(tiny_bert, bucket_rows=None).eval()
    padded.load_state_dict(bucketed.state_dict())
    with torch.no_grad():
        for encode in ("encode_user_text", "encode_item_text"):
            assert torch.allclose(getattr(bucketed, encode)(ids, mask), getattr(padded, encode)(ids, mask), atol=1e-5)
    bucketed.train()
    bucketed.encode_user_text(ids, mask).sum().backward()  # gradients reach the adapters through every group
    assert all(p.grad is not None for n, p in bucketed.named_parameters() if "lora_A.user" in n)


def test_frozen_base_dropout_is_off_unless_asked_for(tiny_bert):
    def dropout_rates(tower: TwoTower, lora: bool) -> set[float]:
        return {m.p for n, m in tower.named_modules()
                if isinstance(m, torch.nn.Dropout) and ("lora_dropout" in n) == lora}

    default, kept = _tower(tiny_bert, lora_dropout=0.05), _tower(tiny_bert, backbone_dropout=True)
    assert dropout_rates(default, lora=False) == {0.0} and dropout_rates(default, lora=True) == {0.05}
    assert max(dropout_rates(kept, lora=False)) > 0


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_llama"])
def test_user_layers_read_history_through_the_first_blocks_only(request, backbone):
    from recsys_tt.model.backbone import block_list

    path = request.getfixturevalue(backbone)
    torch.manual_seed(0)
    tower = _tower(path, user_input="item_vectors", user_layers=1).eval()
    cut_backbone = load_model(path)
    parent, attribute = block_list(cut_backbone)
    setattr(parent, attribute, getattr(parent, attribute)[:1])
    cut_backbone.config.num_hidden_layers = 1
    cut = TwoTower(cut_backbone, TowerConfig(backbone=path, user_input="item_vectors"), num_items=6).eval()
    missing, _ = cut.load_state_dict(tower.state_dict(), strict=False)
    assert not missing  # the 1-block tower is the 2-block one with its upper block removed
    prefix, history = torch.tensor([[101, 2000, 102]]), torch.nn.functional.normalize(torch.randn(1, 3, 32), dim=-1)
    args = (prefix, torch.ones_like(prefix), history, torch.ones(1, 3, dtype=torch.long))
    assert torch.allclose(tower.encode_user_history(*args), cut.encode_user_history(*args), atol=1e-5)
    assert len(getattr(*block_list(tower.encoder))) == 2  # the item tower keeps both blocks
    ids, mask = _tokens()
    full = _tower(path, user_input="item_vectors").eval()
    full.load_state_dict(tower.state_dict())
    assert torch.allclose(tower.encode_item_text(ids, mask), full.encode_item_text(ids, mask), atol=1e-6)
    assert not torch.allclose(tower.encode_user_history(*args), full.encode_user_history(*args), atol=1e-4)
    with pytest.raises(ValueError, match="exceeds the backbone's 2 blocks"):
        _tower(path, user_input="item_vectors", user_layers=3)


@pytest.mark.parametrize("bad", [dict(user_layers=0), dict(user_layers=1, user_input="text")])
def test_nonsense_user_layers_are_refused(bad):
    with pytest.raises(ValueError, match="user_layers"):
        TowerConfig(**bad)


def test_building_towers_raises_no_deprecation_warnings(tiny_bert):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        tower = _tower(tiny_bert, gradient_checkpointing=True, lora_targets="all-linear")
    assert tower.encoder.base_model.model.is_activation_checkpointing


def test_random_backbone_is_not_the_pretrained_one_and_is_rebuilt_identically(tiny_bert, tmp_path):
    model = load_model(tiny_bert)  # the fixture is itself seeded random weights: shift them to tell them apart
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.save_pretrained(tmp_path)
    pretrained = load_model(str(tmp_path)).state_dict()
    first, second = (load_model(str(tmp_path), init="random").state_dict() for _ in range(2))
    name = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(first[name], pretrained[name])
    assert all(torch.equal(first[k], second[k]) for k in first)  # an export rebuilds it from its config
    torch.manual_seed(1)
    before = torch.rand(1)
    torch.manual_seed(1)
    load_model(tiny_bert, init="random")
    assert torch.equal(torch.rand(1), before)  # the caller's random stream is left as it was


def test_frozen_adapters_leave_only_heads_history_input_and_ids_to_train(tiny_bert):
    tower = _tower(tiny_bert, train_adapters=False, projection_dim=16)
    ids, mask = _tokens()
    tower.encode_items(ids, mask, torch.arange(4))
    tower.encode_user_text(ids, mask)  # switching adapters must not unfreeze them
    trainable = {n.split(".")[0] for n, p in tower.named_parameters() if p.requires_grad}
    assert trainable == {"heads", "item_ids", "history_in"}


def test_a_frozen_item_adapter_leaves_the_user_adapter_training(tiny_bert):
    tower = _tower(tiny_bert, train_item_adapter=False)
    ids, mask = _tokens()
    tower.encode_items(ids, mask, torch.arange(4))
    tower.encode_user_text(ids, mask)
    adapters = {(n.split("lora_")[1].split(".")[1], p.requires_grad)
                for n, p in tower.named_parameters() if "lora_" in n}
    assert adapters == {("item", False), ("user", True)}
    with pytest.raises(ValueError, match="needs an adapter per tower"):
        TowerConfig(train_item_adapter=False, shared_adapter=True)


def test_item_id_dropout_drops_ids_in_training_only(tiny_bert):
    tower = _tower(tiny_bert, item_id_dropout=0.5)
    with torch.no_grad():
        tower.item_ids.weight.normal_()
    text = torch.nn.functional.normalize(torch.randn(6, tower.dim), dim=-1)
    items = torch.arange(6).repeat(200)
    torch.manual_seed(0)
    trained = tower.add_item_ids(text.repeat(200, 1), items)
    kept_text = torch.isclose(trained, text.repeat(200, 1)).all(-1)
    assert 0.4 < kept_text.float().mean() < 0.6  # about half the occurrences lost their id vector
    tower.eval()
    assert not torch.isclose(tower.add_item_ids(text, torch.arange(6)), text).all(-1).any()
    with pytest.raises(ValueError, match="item_id_dropout must be in"):
        TowerConfig(item_id_dropout=1.0)


def test_item_id_max_norm_caps_long_id_vectors_and_keeps_short_ones(tiny_bert):
    tower = _tower(tiny_bert, item_id_max_norm=0.5)
    with torch.no_grad():
        tower.item_ids.weight.zero_()
        tower.item_ids.weight[0, 0] = 3.0  # long: capped to 0.5
        tower.item_ids.weight[1, 0] = 0.2  # short: kept
    text = torch.zeros(2, tower.dim)
    text[:, 1] = 1.0
    vectors = tower.add_item_ids(text, torch.tensor([0, 1]))
    expected = torch.nn.functional.normalize(torch.tensor([[0.5, 1.0], [0.2, 1.0]]), dim=-1)
    assert torch.allclose(vectors[:, :2], expected, atol=1e-6)
    with pytest.raises(ValueError, match="item_id_max_norm must be positive"):
        TowerConfig(item_id_max_norm=0.0)


def test_items_without_id_vectors_get_the_ones_their_text_predicts(tiny_bert):
    import torch.nn.functional as F

    tower = TwoTower.from_config(TowerConfig(backbone=tiny_bert, item_id_embeddings=True), num_items=400)
    dim = tower.dim
    text = F.normalize(torch.randn(403, dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    mapping = torch.randn(dim, dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tower.item_ids.weight.copy_(text[:400] @ mapping)  # id vectors that are a linear function of the text
        tower.seen_items[[5, 6]] = False  # never trained: their rows hold nothing the text predicts
        tower.item_ids.weight[[5, 6]] = 0
    missing = torch.tensor([5, 6, 400, 401, 402])  # unseen, and three added since training
    predicted = tower.predicted_item_ids(text, missing)
    assert torch.allclose(predicted, text[missing] @ mapping, rtol=0.05, atol=0.05)
    vectors = tower.catalog_item_vectors(text)
    assert torch.allclose(vectors[missing], F.normalize(text[missing] + predicted, dim=-1), atol=1e-5)
    assert torch.allclose(vectors[:5], tower.add_item_ids(text[:5], torch.arange(5)))  # trained ones as they are
    tower.fill_item_ids(text)  # the predictions become the items' own id vectors
    assert tower.num_items == 403 and bool(tower.seen_items.all())
    assert torch.allclose(tower.add_item_ids(text, torch.arange(403)), vectors, atol=1e-5)
    text_only = TwoTower.from_config(TowerConfig(backbone=tiny_bert, item_id_embeddings=False), num_items=400)
    assert torch.equal(text_only.catalog_item_vectors(text), text)
