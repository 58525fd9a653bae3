"""A training step on fixed shapes (``tower.bucket_rows: null``) never makes the host wait for the device.

On a GPU each such wait drains the queue of kernels, and a small model's step becomes launch-bound. The CPU cannot
show the waits, so this test records the operations that need a device value on the host (a scalar read, a
data-dependent shape, a copy to the host) inside every per-step function of ours: the module's batch-start hook,
training step and backward, and the per-step callbacks.
"""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.helpers import train_args, write_tiny_dataset

aten = torch.ops.aten
_WAITING_OPS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim,
                aten.unique_consecutive, aten.repeat_interleave}


class HostReads(TorchDispatchMode):
    """Records the operations that would make the host read a device value, while ``active``."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.active = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.active and (func.overloadpacket in _WAITING_OPS or _indexes_by_mask(func, args)):
            self.seen.append(f"{func} at {_our_caller()}")
        return func(*args, **(kwargs or {}))

    def around(self, function, from_step: int = 0):
        """``function`` (a method) recorded, from the module's training step ``from_step`` on."""
        def recorded(owner, *args, **kwargs):
            module = owner if hasattr(owner, "global_step") else args[1]  # a module's hook, or a callback's
            self.active += module.global_step >= from_step
            try:
                return function(owner, *args, **kwargs)
            finally:
                self.active -= module.global_step >= from_step if self.active else 0
        return recorded

    def host_copy(self, name: str):
        """Tensor.cpu/tolist/numpy, which on the CPU dispatch nothing, recorded while active."""
        original = getattr(torch.Tensor, name)

        def copy(tensor, *args, **kwargs):
            if self.active:
                self.seen.append(f"Tensor.{name}")
            return original(tensor, *args, **kwargs)
        return copy


def _indexes_by_mask(func, args) -> bool:
    if func.overloadpacket not in (aten.index, aten.index_put, aten.index_put_):
        return False
    return any(i is not None and i.dtype == torch.bool for i in args[1])


@pytest.mark.parametrize("negatives", ["catalog", "batch"])
def test_a_fixed_shape_training_step_reads_nothing_from_the_device(tmp_path, tiny_bert, monkeypatch, negatives):
    from recsys_tt.training.callbacks import ProgressLog
    from recsys_tt.training.ema import TrainableEMA
    from recsys_tt.training.lightning_cli import main
    from recsys_tt.training.module import TwoTowerModule

    reads = HostReads()
    # Step 0 encodes the catalog once for the run (and again every cache_refresh_steps), not every step.
    monkeypatch.setattr(TwoTowerModule, "on_train_batch_start", reads.around(TwoTowerModule.on_train_batch_start, 1))
    for owner, name in ((TwoTowerModule, "training_step"), (TwoTowerModule, "backward"),
                        (ProgressLog, "on_train_batch_end"), (TrainableEMA, "on_train_batch_end")):
        monkeypatch.setattr(owner, name, reads.around(getattr(owner, name)))
    for name in ("cpu", "tolist", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, reads.host_copy(name))
    paths = write_tiny_dataset(tmp_path / "data")
    ema = '{"class_path": "recsys_tt.training.ema.TrainableEMA", "init_args": {"decay": 0.9}}'
    with reads:
        main(train_args(tmp_path, paths, tiny_bert, 4, "--model.tower.bucket_rows", "null",
                        "--model.loss.negatives", negatives, "--model.fresh_items", "3",
                        "--model.cache_refresh_steps", "100", "--trainer.val_check_interval", "100",
                        "--test_after_fit", "false", "--trainer.callbacks", f"[{ema}]"))
    assert reads.active == 0
    assert reads.seen == [], f"a training step read the device on the host: {sorted(set(reads.seen))}"


def test_the_recorder_sees_a_scalar_read_and_a_mask_selection():
    reads = HostReads()
    reads.active = 1
    with reads:
        x = torch.arange(4.0)
        x[x > 1].sum()
        x.max().item()
    assert any("index" in op for op in reads.seen) and any("_local_scalar_dense" in op for op in reads.seen)


def _our_caller() -> str:
    """The innermost frame of recsys_tt's code, so a failure says which line reads the device."""
    frames = [f for f in traceback.extract_stack() if "recsys_tt" in f.filename and "tests" not in f.filename]
    return f"{frames[-1].filename.rsplit('/', 2)[-1]}:{frames[-1].lineno}" if frames else "outside recsys_tt"
