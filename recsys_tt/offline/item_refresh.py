"""Refreshing an export's item vectors from its serving log, between full retrainings.

A full fine-tuning (``train.py fit --data.logs``) re-encodes the whole catalog; this refresh does not. It fits
the item id vectors alone (each item's correction around its text vector; new items start from their text), with
the towers frozen, to what the log says: every click (a softmax over the catalog for the user as served) and, with
``log_impressions``, every shown item clicked or skipped (the position-based likelihood, ``position_based_loss``).
The fit is a maximum a posteriori estimate: a Gaussian prior of precision ``prior_precision`` keeps each id vector
near where it was, so an item moves as far as its evidence carries it (one click: a little; hundreds: far), items
without evidence stay put, and the result does not depend on how long the optimiser runs (L-BFGS, full batch).
Users are encoded once, as served, so a refresh of a catalog of tens of thousands of items takes seconds to a
minute on a CPU. The folder is rewritten atomically with the grown model, the new vectors and index, each item's
logged clicks (``logged_clicks``, which the serving uncertainty counts as observations) and a new model_version.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from recsys_tt.export.catalog import loss_tensors, write_catalog
from recsys_tt.export.folder import ExportFolder
from recsys_tt.export.index import build_index
from recsys_tt.model.loss import InBatchSoftmax, LossConfig, sampled_softmax_loss
from recsys_tt.model.metrics import slate_scores
from recsys_tt.training.logged_clicks import LoggedImpressions, read_log

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefreshConfig:
    """How a refresh trains the item id vectors."""

    steps: int = 30
    """L-BFGS iterations over the whole log."""
    prior_precision: float = 20.0
    """Precision of the Gaussian prior around each id vector as it was: larger keeps items closer to it."""
    log_impressions: float = 1.0
    """Weight of the position-based likelihood of every shown item (0: clicks only)."""
    examination: list[float] | None = None
    """P(a user looks at position j) of the logged slates; None: the DCG discount 1 / log2(j + 1)."""
    max_slates: int | None = None
    """Learn from at most this many of the most recent slates (None: the whole log)."""
    skip_orphans: bool = False
    """Skip (and count) clicks whose slates the log no longer holds (retention deleted them); else refuse them."""

    def __post_init__(self) -> None:
        if self.steps < 1 or not self.prior_precision > 0 or (self.max_slates is not None and self.max_slates < 1):
            raise ValueError(f"refresh needs steps >= 1, prior_precision > 0 and max_slates >= 1 or None; got "
                             f"{self}.")
        LossConfig(log_impressions=self.log_impressions, examination=self.examination)  # checks both


def refresh_item_vectors(export_dir: str | Path, log_dir: str | Path, config: RefreshConfig) -> dict:
    """Trains ``export_dir``'s item id vectors on the log in ``log_dir`` and rewrites the folder; returns a summary."""
    began = time.perf_counter()
    export = ExportFolder.load(export_dir)
    slates = _recent(read_log(log_dir, export.item_rows, config.skip_orphans).impressions, config.max_slates)
    users = torch.from_numpy(export.new_user_vectors(slates.profiles, slates.histories))
    model = export.encoder.model.float()
    model.fill_item_ids(torch.from_numpy(export.text_vectors))  # the prior means of items without id vectors
    shown, clicked = torch.as_tensor(slates.shown), torch.as_tensor(slates.clicked)
    valid = shown >= 0
    observed = shown[valid].unique()
    model.seen_items[observed] = True  # its id vector now applies (and trains)
    extra = loss_tensors(export)
    head = InBatchSoftmax(LossConfig(temperature=_temperature(extra), learn_temperature=False,
                                     log_impressions=config.log_impressions, examination=config.examination),
                          len(export.items))
    first_loss, last_loss = _train(model, head, torch.from_numpy(export.text_vectors), users, shown, clicked, config)
    with torch.no_grad():
        vectors = model.add_item_ids(torch.from_numpy(export.text_vectors), torch.arange(len(export.items)))
    clicks = np.bincount(shown[clicked].numpy(), minlength=len(export.items))
    summary = {"slates": len(slates), "clicks": int(clicked.sum()), "items_observed": len(observed),
               "loss_first": first_loss, "loss_last": last_loss, "seconds": round(time.perf_counter() - began, 1)}
    index, _ = build_index(vectors.numpy(), export.meta["factory"], export.meta["search_params"])  # every row moved
    write_catalog(export, export.items.assign(logged_clicks=clicks), export.text_vectors, vectors.numpy(), index,
                  towers=(model, extra), note={"refresh": {**summary, "log": str(log_dir), **asdict(config)}})
    log.info("Refreshed %s from %d slates (%d clicks) in %.0fs: loss %.4f -> %.4f", export.folder, len(slates),
             summary["clicks"], summary["seconds"], first_loss, last_loss)
    return summary


def _recent(slates: LoggedImpressions, limit: int | None) -> LoggedImpressions:
    if limit is None or limit >= len(slates):
        return slates
    return LoggedImpressions(slates.profiles[-limit:], slates.histories[-limit:], slates.shown[-limit:],
                             slates.clicked[-limit:])


def _temperature(loss_tensors: dict[str, torch.Tensor]) -> float:
    """The temperature the export's softmax trained at (its scores' scale)."""
    return math.exp(float(loss_tensors["loss.log_temperature"].reshape(-1)[0]))


def _train(model, head: InBatchSoftmax, text: torch.Tensor, users: torch.Tensor, shown: torch.Tensor,
           clicked: torch.Tensor, config: RefreshConfig) -> tuple[float, float]:
    """Fits the id vectors alone (L-BFGS on the negative log posterior, summed over the log); returns the first and
    last objective per slate."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    ids = model.item_ids.weight.requires_grad_(True)
    prior = ids.detach().clone()
    rows, positions = clicked.nonzero(as_tuple=True)
    targets, valid, catalog = shown[rows, positions], shown >= 0, torch.arange(len(text))
    if config.log_impressions:
        with torch.no_grad():
            head.calibrate(slate_scores(users, model.add_item_ids(text, catalog), shown), clicked, valid)

    def objective() -> torch.Tensor:
        vectors = model.add_item_ids(text, catalog)
        loss = sampled_softmax_loss(users[rows], vectors, targets, head.temperature) * len(rows)
        if config.log_impressions:
            scores = slate_scores(users, vectors, shown)
            loss = loss + config.log_impressions * head.impression_loss(scores, clicked, valid) * valid.sum()
        return (loss + config.prior_precision / 2 * (ids - prior).square().sum()) / len(shown)

    optimizer = torch.optim.LBFGS([ids], max_iter=config.steps, history_size=10, line_search_fn="strong_wolfe")
    losses = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        losses.append(float(loss.detach()))
        return loss

    optimizer.step(closure)
    ids.requires_grad_(False)
    return losses[0], losses[-1]
