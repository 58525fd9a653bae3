"""Two CPU processes (gloo): the gathered loss equals the single-process loss on the concatenated batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from recsys_tt.loss import InBatchSoftmax, LossConfig

WORLD = 2
# Rank 0 holds 3 rows / 3 item columns, rank 1 holds 3 rows / 2 columns (uneven: exercises padding).
ROWS = {0: slice(0, 3), 1: slice(3, 6)}
COLS = {0: slice(0, 3), 1: slice(3, 5)}
POSITIVE = torch.tensor([0, 1, 1, 3, 4, 4])  # global columns; rows 1 and 2 share an item
ITEM_IDS = torch.tensor([10, 11, 12, 13, 14])


def _batch():
    g = torch.Generator().manual_seed(0)
    return F.normalize(torch.randn(6, 8, generator=g), dim=-1), F.normalize(torch.randn(5, 8, generator=g), dim=-1)


def _loss_module() -> InBatchSoftmax:
    module = InBatchSoftmax(LossConfig(temperature=0.1), num_items=15)
    module.set_item_counts(torch.arange(15))
    return module


def _worker(rank: int, init_file: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    users, items = _batch()
    local_items = items[COLS[rank]].clone().requires_grad_(True)
    local_positive = POSITIVE[ROWS[rank]] - COLS[rank].start
    loss = _loss_module()(users[ROWS[rank]], local_items, local_positive, ITEM_IDS[COLS[rank]])
    loss.backward()
    out[rank] = (loss.item(), local_items.grad / WORLD)  # DDP averages gradients over ranks
    dist.destroy_process_group()


def test_gathered_loss_and_gradients_equal_single_process(tmp_path):
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(str(tmp_path / "init"), out), nprocs=WORLD, join=True)
    users, items = _batch()
    items.requires_grad_(True)
    single = _loss_module()(users, items, POSITIVE, ITEM_IDS)
    single.backward()
    mean_of_ranks = sum(out[r][0] for r in range(WORLD)) / WORLD
    assert abs(mean_of_ranks - single.item()) < 1e-5
    gathered_grad = torch.cat([out[r][1] for r in range(WORLD)])
    assert torch.allclose(gathered_grad, items.grad, atol=1e-6)
