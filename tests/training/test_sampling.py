from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_tt.data.examples import training_examples, training_windows
from recsys_tt.training.sampling import MixedBatches, StepBatches, StepLoader


def test_windows_tile_every_target_once_with_the_latest_window_full():
    train = [np.arange(10, 17), np.array([1, 2])]  # 7 items: targets at positions 1..6; 2 items: target 1
    windows = training_windows(train, length=4, min_history=1)
    assert windows.tolist() == [[0, 2, 6], [0, 0, 2], [1, 0, 1]]
    targets = [t for u, a, b in windows for t in train[u][a + 1: b + 1]]
    assert sorted(targets) == sorted(list(train[0][1:]) + list(train[1][1:]))
    examples = training_examples(train, min_history=1)
    assert len(examples) == len(targets)  # both forms see every transition once an epoch
    # min_history 0: each user's oldest window starts at -1, so item 0 is a target too (from the profile alone).
    assert training_windows(train, length=4, min_history=0).tolist() == [[0, 2, 6], [0, -1, 2], [1, -1, 1]]
    assert len(training_examples(train, min_history=0)) == len(train[0]) + len(train[1])


def test_step_batches_resume_at_the_restored_step_and_split_ranks():
    examples = np.arange(40).reshape(20, 2)
    step = {"now": 0}

    def batches(rank):
        return StepBatches(examples, lambda x: x[:, 0].tolist(), batch_size=2, seed=3, rank=rank, world_size=2,
                           current_step=lambda: step["now"])

    full = list(batches(0))
    other = list(batches(1))
    assert len(full) == 5 and not set(map(tuple, full)) & set(map(tuple, other))  # ranks get disjoint rows
    step["now"] = 3
    assert list(batches(0)) == full[3:]  # resumed mid-epoch: the remaining batches of the same order
    step["now"] = 5
    assert list(batches(0)) != full  # next epoch: a new order


def test_step_batches_warn_when_resumed_with_other_settings(caplog):
    def batches(seed):
        return StepBatches(np.arange(40).reshape(20, 2), list, batch_size=2, seed=seed, rank=0, world_size=1,
                           current_step=lambda: 0)

    batches(3).load_state_dict(batches(3).state_dict())
    assert not caplog.records
    batches(4).load_state_dict(batches(3).state_dict())
    assert "'seed': (3, 4)" in caplog.text


def test_window_batches_align_the_profile_target_with_the_profile_state(tiny_dataset, tiny_bert):
    from recsys_tt.data.text import TextTemplates
    from recsys_tt.data.user_inputs import user_input_mode
    from recsys_tt.training.datamodule import RecDataModule
    from tests.helpers import TINY_TEMPLATES

    data = RecDataModule("files", tiny_dataset["interactions"], tiny_dataset["items"], tiny_dataset["users"],
                         templates=TextTemplates(**TINY_TEMPLATES), backbone=tiny_bert, history_len=3, min_history=0)
    with pytest.raises(RuntimeError, match="user_input is unset"):
        data.train_batch(np.array([[2, -1, 1]]))
    data.user_input = user_input_mode("item_vectors")  # what a trainer's setup takes from the model
    train = data.split.train  # 4 training items per user
    batch = data.train_batch(np.array([[2, -1, 1], [2, 1, 3]]))  # user 2: items 0-1 from -1, items 2-3 from 1
    targets = batch["items"][batch["positive"].clamp(min=0)].masked_fill(batch["positive"] < 0, -1)
    assert targets.tolist() == [[train[2][0], train[2][1], -1], [-1, train[2][2], train[2][3]]]
    assert batch["history"].tolist() == [[train[2][0], 0], [train[2][1], train[2][2]]]
    assert batch["history_mask"].tolist() == [[1, 0], [1, 1]]
    with pytest.raises(ValueError, match="min_history"):
        RecDataModule("files", tiny_dataset["interactions"], tiny_dataset["items"], min_history=-1)


def test_validation_samples_a_fixed_set_of_users_and_test_ranks_them_all(tiny_dataset, tiny_bert):
    from recsys_tt.training.datamodule import RecDataModule

    def loaders(seed):
        data = RecDataModule("files", tiny_dataset["interactions"], tiny_dataset["items"], backbone=tiny_bert,
                             val_users=5, seed=seed, eval_batch_size=2)
        return list(data.val_dataloader().dataset), list(data.test_dataloader().dataset)

    valid, test = loaders(0)
    assert len(valid) == 5 and valid == sorted(set(valid)) and set(valid) < set(test)
    assert len(test) == 8 and loaders(0)[0] == valid and loaders(1)[0] != valid
    with pytest.raises(ValueError, match="val_users"):
        RecDataModule("files", tiny_dataset["interactions"], tiny_dataset["items"], val_users=0)


def test_mixed_batches_spread_one_source_over_a_share_of_steps_and_resume():
    step = {"now": 0}

    def source(offset):
        return StepBatches(np.arange(offset, offset + 12)[:, None], lambda x: int(x[0, 0]), batch_size=1, seed=0,
                           rank=0, world_size=1, current_step=lambda: step["now"])

    mixed = MixedBatches(source(0), source(100), share=0.25, current_step=lambda: step["now"])
    assert len(mixed) == 48  # one pass over the first source's 12 batches
    epoch = list(mixed)
    logged = [b for b in epoch if b < 100]
    assert [i for i, b in enumerate(epoch) if b < 100][:3] == [3, 7, 11]  # every fourth step, evenly
    assert sorted(logged) == list(range(12))  # each of the first source's batches once
    assert len({b for b in epoch if b >= 100}) == 12  # the second source cycles through its own epochs
    step["now"] = 20
    assert list(mixed) == epoch[20:]  # a resumed run continues with the same batches
    with pytest.raises(ValueError, match="share must be in"):
        MixedBatches(source(0), source(100), share=1.0, current_step=lambda: 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_step_loader_yields_the_batches_in_step_order_and_resumes_mid_epoch(workers):
    step = {"now": 0}
    batches = StepBatches(np.arange(30).reshape(15, 2), lambda x: torch.as_tensor(x[:, 0]), batch_size=2, seed=1,
                          rank=0, world_size=1, current_step=lambda: step["now"])
    loader = StepLoader(batches, workers=workers, pin_memory=False)
    expected = [b.tolist() for b in batches]
    assert [b.tolist() for b in loader] == expected and len(loader) == 7
    step["now"] = 10  # epoch 1, step 3: a resumed run continues with the batches of the uninterrupted one
    assert [b.tolist() for b in loader] == [batches.batch_at(s).tolist() for s in range(10, 14)]
    assert loader.state_dict() == batches.state_dict()
