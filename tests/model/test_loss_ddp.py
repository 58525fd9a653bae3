"""Two CPU processes (gloo): the gathered loss equals the single-process loss on the concatenated batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from recsys_tt.model.loss import InBatchSoftmax, LossConfig

WORLD = 2
# Rank 0 holds 3 rows / 3 item columns, rank 1 holds 3 rows / 2 columns (uneven: exercises padding).
ROWS = {0: slice(0, 3), 1: slice(3, 6)}
COLS = {0: slice(0, 3), 1: slice(3, 5)}
POSITIVE = torch.tensor([0, 1, 1, 3, 4, 4])  # global columns; rows 1 and 2 share an item
ITEM_IDS = torch.tensor([10, 11, 12, 13, 14])


def _batch(item_ids: torch.Tensor):
    """Users and item columns; columns with the same id get the same vector (the same item encoded twice)."""
    g = torch.Generator().manual_seed(0)
    users = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    items = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    first = [int((item_ids == i).nonzero()[0]) for i in item_ids]
    return users, items[first]


def _loss_module() -> InBatchSoftmax:
    module = InBatchSoftmax(LossConfig(temperature=0.1), num_items=15)
    module.set_item_counts(torch.arange(15))
    return module


def _worker(rank: int, init_file: str, out: dict, item_ids: torch.Tensor) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    users, items = _batch(item_ids)
    local_items = items[COLS[rank]].clone().requires_grad_(True)
    local_positive = POSITIVE[ROWS[rank]] - COLS[rank].start
    loss = _loss_module()(users[ROWS[rank]], local_items, local_positive, item_ids[COLS[rank]])
    loss.backward()
    out[rank] = (loss.item(), local_items.grad / WORLD)  # DDP averages gradients over ranks
    dist.destroy_process_group()


def _spawn(tmp_path, item_ids: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(mean loss of the ranks, per-column gradients) of a 2-process run."""
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path / "init"), out, item_ids), nprocs=WORLD, join=True)
    return sum(out[r][0] for r in range(WORLD)) / WORLD, torch.cat([out[r][1] for r in range(WORLD)])


def test_gathered_loss_and_gradients_equal_single_process(tmp_path):
    mean_of_ranks, gathered_grad = _spawn(tmp_path, ITEM_IDS)
    users, items = _batch(ITEM_IDS)
    items.requires_grad_(True)
    single = _loss_module()(users, items, POSITIVE, ITEM_IDS)
    single.backward()
    assert abs(mean_of_ranks - single.item()) < 1e-5
    assert torch.allclose(gathered_grad, items.grad, atol=1e-6)


def test_an_item_on_two_ranks_counts_once_as_in_one_process(tmp_path):
    """Rank 1's first column is item 12 again (same vector); one process would hold it once."""
    item_ids = torch.tensor([10, 11, 12, 12, 14])
    mean_of_ranks, gathered_grad = _spawn(tmp_path, item_ids)
    users, items = _batch(item_ids)
    unique = items[[0, 1, 2, 4]].clone().requires_grad_(True)
    single = _loss_module()(users, unique, torch.tensor([0, 1, 1, 2, 3, 3]), torch.tensor([10, 11, 12, 14]))
    single.backward()
    assert abs(mean_of_ranks - single.item()) < 1e-5
    per_item = torch.stack([gathered_grad[0], gathered_grad[1], gathered_grad[2] + gathered_grad[3], gathered_grad[4]])
    assert torch.allclose(per_item, unique.grad, atol=1e-6)  # the encoder sees the sum over copies
