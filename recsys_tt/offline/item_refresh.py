"""Refreshing an export's item vectors from its serving log, between full retrainings.

A full fine-tuning (``train.py fit --data.logs``) re-encodes the whole catalog; this refresh does not. It fits
the item id vectors alone (each item's correction around its text vector; new items start from their text), with
the towers frozen, to what the log says: every click (a softmax over the catalog for the user as served) and, with
``log_impressions``, every shown item clicked or skipped (the position-based likelihood, ``position_based_loss``).
The fit is a maximum a posteriori estimate: a Gaussian prior of precision ``prior_precision`` keeps each id vector
near where it was before the first refresh, so an item moves as far as its evidence carries it (one click: a
little; hundreds: far), items without evidence stay put, and the result does not depend on how long the optimiser
runs (L-BFGS, full batch). The log is read whole each time, so a prior centred on the last refresh's result would
count the same evidence again at every refresh.
With ``cold_offset``, one vector shared by every item placed by its text alone (no training interactions) is fitted
too, so evidence on some new items moves them all. Users are encoded once, as served, so a refresh of a catalog of
tens of thousands of items takes seconds to a minute on a CPU. The folder is rewritten atomically with the grown
model, the new vectors and index, each item's logged clicks (``logged_clicks``, which the serving uncertainty counts
as observations) and a new model_version.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from recsys_tt.export.catalog import COLD_ITEM_OFFSET, PRIOR_ITEM_IDS, cold_item_offset, extra_tensors, write_catalog
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
    """Precision of the Gaussian prior around each id vector as it was before the first refresh: larger keeps items
    closer to it."""
    log_impressions: float = 1.0
    """Weight of the position-based likelihood of every shown item (0: clicks only)."""
    examination: list[float] | None = None
    """P(a user looks at position j) of the logged slates; None: the DCG discount 1 / log2(j + 1)."""
    max_slates: int | None = None
    """Learn from at most this many of the most recent slates (None: the whole log)."""
    skip_orphans: bool = False
    """Skip (and count) clicks whose slates the log no longer holds (retention deleted them); else refuse them."""
    cold_offset: bool = True
    """Also fit one offset shared by every item without training interactions (each placed by the id vector its
    text predicts), under the same prior: what the log says about the cold items it showed then moves the ones it
    did not show, and items added later start from it (``add_items``). New items can differ from old ones as a group
    (new games are wanted more), which the text-to-id map, fitted on old items, cannot know."""

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
    extra = extra_tensors(export)
    head = InBatchSoftmax(LossConfig(temperature=_temperature(extra), learn_temperature=False,
                                     log_impressions=config.log_impressions, examination=config.examination),
                          len(export.items))
    cold = torch.from_numpy(export.items["train_count"].to_numpy() == 0)
    start = _start(model, extra, cold)
    first_loss, last_loss, offset = _train(model, head, torch.from_numpy(export.text_vectors), users, shown, clicked,
                                           torch.tensor(slates.catalog_sizes), config, start, cold)
    extra[COLD_ITEM_OFFSET] = offset
    with torch.no_grad():
        vectors = model.add_item_ids(torch.from_numpy(export.text_vectors), torch.arange(len(export.items)))
        vectors[cold] = model.boost_unseen(vectors[cold])
    clicks = np.bincount(shown[clicked].numpy(), minlength=len(export.items))
    summary = {"slates": len(slates), "clicks": int(clicked.sum()), "items_observed": len(observed),
               "loss_first": first_loss, "loss_last": last_loss, "seconds": round(time.perf_counter() - began, 1),
               "cold_offset_norm": round(float(offset.norm()), 4)}
    index, _ = build_index(vectors.numpy(), export.meta["factory"], export.meta["search_params"])  # every row moved
    write_catalog(export, export.items.assign(logged_clicks=clicks), export.text_vectors, vectors.numpy(), index,
                  towers=(model, extra), note={"refresh": {**summary, "log": str(log_dir), **asdict(config)}})
    log.info("Refreshed %s from %d slates (%d clicks) in %.0fs: loss %.4f -> %.4f", export.folder, len(slates),
             summary["clicks"], summary["seconds"], first_loss, last_loss)
    return summary


def _start(model, extra: dict[str, torch.Tensor], cold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The prior means of the id vectors, which ``extra`` keeps from the first refresh on, and the cold offset the
    last refresh found; takes the offset out of the cold items' id vectors, so the fit starts where the last ended.

    Every refresh reads the whole log (up to ``max_slates``), so its prior must be the vectors before any refresh:
    centred on the last refresh's result, each refresh would count the same clicks and skips once more."""
    ids = model.item_ids.weight
    offset = cold_item_offset(extra, model.dim)
    with torch.no_grad():
        ids[cold] -= offset
    extra.setdefault(PRIOR_ITEM_IDS, ids.detach().clone())
    return extra[PRIOR_ITEM_IDS].float(), offset


def _recent(slates: LoggedImpressions, limit: int | None) -> LoggedImpressions:
    return slates if limit is None or limit >= len(slates) else slates[-limit:]


def _temperature(extra: dict[str, torch.Tensor]) -> float:
    """The temperature the export's softmax trained at (its scores' scale)."""
    return math.exp(float(extra["loss.log_temperature"].reshape(-1)[0]))


def _train(model, head: InBatchSoftmax, text: torch.Tensor, users: torch.Tensor, shown: torch.Tensor,
           clicked: torch.Tensor, catalog_sizes: torch.Tensor, config: RefreshConfig,
           start: tuple[torch.Tensor, torch.Tensor], cold: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """Fits the id vectors alone (L-BFGS on the negative log posterior, summed over the log; ``start`` holds the
    prior means and the last offset), and with ``config.cold_offset`` one offset shared by the ``cold`` (N,) items'
    id vectors, which ends added to them; returns the first and last objective per slate and the offset. A click's
    softmax runs over the catalog its slate was chosen from: an item added since was no alternative to it."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    ids = model.item_ids.weight.requires_grad_(True)
    prior, offset = start
    offset = (offset if config.cold_offset else torch.zeros_like(offset)).clone().requires_grad_(config.cold_offset)
    shift = cold[:, None].float()
    # text + offset + id vector is the cold items' text + (offset + id vector): the offset joins the id vector
    # (exactly so without item_id_max_norm, which caps the id vector alone).
    rows, positions = clicked.nonzero(as_tuple=True)
    targets, valid, catalog = shown[rows, positions], shown >= 0, torch.arange(len(text))
    later = catalog[None, :] >= catalog_sizes[rows, None]  # (clicks, N)
    if config.log_impressions:  # the link is fitted to the prior's scores, so that every refresh fits the same model
        with torch.no_grad():
            fitted = ids.detach().clone()
            ids.copy_(prior)
            head.calibrate(slate_scores(users, model.add_item_ids(text, catalog), shown), clicked, valid)
            ids.copy_(fitted)

    def objective() -> torch.Tensor:
        vectors = model.add_item_ids(text + shift * offset, catalog)
        loss = sampled_softmax_loss(users[rows], vectors, targets, head.temperature, excluded=later) * len(rows)
        if config.log_impressions:
            scores = slate_scores(users, vectors, shown)
            loss = loss + config.log_impressions * head.impression_loss(scores, clicked, valid) * valid.sum()
        deviation = (ids - prior).square().sum() + offset.square().sum()
        return (loss + config.prior_precision / 2 * deviation) / len(shown)

    optimizer = torch.optim.LBFGS([ids, offset] if config.cold_offset else [ids], max_iter=config.steps,
                                  history_size=10, line_search_fn="strong_wolfe")
    losses = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        losses.append(float(loss.detach()))
        return loss

    optimizer.step(closure)
    ids.requires_grad_(False)
    offset = offset.detach()
    with torch.no_grad():
        ids[cold] += offset
    return losses[0], losses[-1], offset
