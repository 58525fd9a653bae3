"""Which batch each training step takes: resumable across steps and ranks (the batch at step s depends only on the
seed, s and the rank), two sources interleaved, and a loader that builds them in worker processes."""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

log = logging.getLogger(__name__)


class StepBatches:
    """Resumable training batches: the batch at optimizer step s depends only on (seed, s, rank).

    Each epoch is a seeded permutation of all examples; every rank takes its slice of each global batch.
    On resume, iteration starts at the step the trainer restored, so a resumed run sees exactly the batches
    an uninterrupted one would have.
    """

    def __init__(self, examples: np.ndarray, make_batch: Callable[[np.ndarray], dict], batch_size: int, seed: int,
                 rank: int, world_size: int, current_step: Callable[[], int]) -> None:
        self.examples, self.make_batch = examples, make_batch
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.current_step = current_step
        self.steps_per_epoch = len(examples) // (batch_size * world_size)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(examples)} training examples cannot fill one batch of {batch_size} "
                             f"x {world_size} ranks; lower data.batch_size.")

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[dict]:
        return (self.batch_at(step) for step in rest_of_epoch(self.current_step(), len(self)))

    def batch_at(self, step: int) -> dict:
        """The batch of this rank at optimizer step ``step``."""
        epoch, b = divmod(step, self.steps_per_epoch)
        first = b * self.batch_size * self.world_size + self.rank * self.batch_size
        return self.make_batch(self.examples[self._order(epoch)[first: first + self.batch_size]])

    @functools.lru_cache(maxsize=2)  # noqa: B019 (two epochs' orders per loader, freed with it)
    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def state_dict(self) -> dict[str, int]:
        """What fixes the batch sequence, saved in checkpoints; the position comes from the trainer's step.

        Having this (and ``load_state_dict``) also tells Lightning that the loader resumes mid-epoch correctly.
        """
        return {"seed": self.seed, "batch_size": self.batch_size, "world_size": self.world_size,
                "examples": len(self.examples)}

    def load_state_dict(self, state: dict) -> None:
        warn_if_changed(state, self.state_dict())


class MixedBatches:
    """Two resumable sources interleaved: a ``share`` of the steps take ``first``'s next batch, spread evenly (step s
    is first's when floor((s + 1) share) > floor(s share)), the others ``second``'s; an epoch is one pass of first."""

    def __init__(self, first: StepBatches, second: StepBatches, share: float, current_step: Callable[[], int]) -> None:
        if not 0 < share < 1:
            raise ValueError(f"share must be in (0, 1), got {share}.")
        self.first, self.second, self.share, self.current_step = first, second, share, current_step

    def __len__(self) -> int:
        return max(round(len(self.first) / self.share), 1)

    def __iter__(self) -> Iterator[dict]:
        return (self.batch_at(step) for step in rest_of_epoch(self.current_step(), len(self)))

    def batch_at(self, step: int) -> dict:
        taken = math.floor(step * self.share)  # first's batches before this step
        if math.floor((step + 1) * self.share) > taken:
            return self.first.batch_at(taken)
        return self.second.batch_at(step - taken)

    def state_dict(self) -> dict:
        return {"share": self.share, "first": self.first.state_dict(), "second": self.second.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        warn_if_changed(state, self.state_dict())


class PairedBatches:
    """Two resumable sources step by step: each batch of ``first`` carries ``second``'s batch of the same step under
    ``key`` (an epoch is one pass of first; second starts its next epoch when it runs out)."""

    def __init__(self, first: StepBatches, second: StepBatches, key: str) -> None:
        self.first, self.second, self.key, self.current_step = first, second, key, first.current_step

    def __len__(self) -> int:
        return len(self.first)

    def __iter__(self) -> Iterator[dict]:
        return (self.batch_at(step) for step in rest_of_epoch(self.current_step(), len(self)))

    def batch_at(self, step: int) -> dict:
        return {**self.first.batch_at(step), self.key: self.second.batch_at(step)}

    def state_dict(self) -> dict:
        return {"first": self.first.state_dict(), self.key: self.second.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        warn_if_changed(state, self.state_dict())


def target_count(batch: dict) -> torch.Tensor:
    """The targets of a training batch (its non-padding positives), as a tensor on the batch's device: reading it
    on the host would make a GPU step wait."""
    return (batch["positive"] >= 0).sum()


def rest_of_epoch(step: int, steps_per_epoch: int) -> range:
    """The steps from ``step`` to the end of its epoch: where a (resumed) loader's iteration runs."""
    epoch = step // steps_per_epoch
    return range(step, (epoch + 1) * steps_per_epoch)


class _StepStream(IterableDataset):
    """A loader's worker builds every ``workers``-th batch from ``start``; the DataLoader takes them round-robin,
    so the batches arrive in step order."""

    def __init__(self, batches: StepBatches | MixedBatches) -> None:
        self.batches, self.start = batches, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        return (self.batches.batch_at(step) for step in rest_of_epoch(self.start, len(self))[worker::workers])


class StepLoader(DataLoader):
    """Resumable batches built in worker processes, optionally in pinned memory, so that a GPU step never waits for
    the next batch or for its copy. It resumes as the batches do (``state_dict`` is theirs)."""

    def __init__(self, batches: StepBatches | MixedBatches, workers: int, pin_memory: bool) -> None:
        # Workers are forked: the batch builder (the data module, its tokenizer, the trainer's step) does not pickle.
        context = "fork" if workers and "fork" in multiprocessing.get_all_start_methods() else None
        super().__init__(_StepStream(batches), batch_size=None, num_workers=workers, pin_memory=pin_memory,
                         prefetch_factor=4 if workers else None, multiprocessing_context=context)
        self.batches = batches

    def __iter__(self) -> Iterator[dict]:
        self.dataset.start = self.batches.current_step()  # read here: workers see a copy of the trainer
        return super().__iter__()

    def state_dict(self) -> dict:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)


def step_loader(batches: StepBatches | MixedBatches, workers: int, pin_memory: bool) -> Iterable[dict]:
    """The batches themselves (built in the training process), or a ``StepLoader`` with workers or pinning."""
    if workers == 0 and not pin_memory:
        return batches
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked workers tokenise (logged users' texts)
    return StepLoader(batches, workers, pin_memory)


def warn_if_changed(saved: dict, now: dict) -> None:
    """Warns when a resumed run's batches are not those of the checkpoint's run."""
    changed = {k: (v, now.get(k)) for k, v in saved.items() if now.get(k) != v}
    if changed:
        log.warning("Resuming with other batches than the checkpoint's run, so it will not reproduce that run "
                    "(setting: (checkpoint, now)): %s", changed)
