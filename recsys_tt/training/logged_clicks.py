"""Training examples from a serving log: each click, with the user as served and how likely its pick was, and its
off-policy weight; and each served slate, clicked or not.

A propensity log folder (``serve.py --log_dir``, or the simulator's) holds impression and feedback lines. Every
reward > 0 on an item of a logged slate is a click; it becomes one example: the user's text and the history
their vector was computed from when the slate was served, the clicked item, the logging policy's probability of
the pick that showed it, the items shown above it (the picks before it) and the slate's size. Every slate becomes
one impression example too: the user as served, the items shown in order and which were clicked, for the
position-based likelihood (``loss.log_impressions``). The log is only read. Lines that cannot become examples
(from before schema version 2, items outside the training catalog, feedback for requests the log does not hold)
are refused together, each with its file and line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recsys_tt.data.examples import pad_rows
from recsys_tt.data.propensity_log import LogFolder, latest_feedback
from recsys_tt.model.encoder import Encoder
from recsys_tt.model.loss import LossConfig, click_weights
from recsys_tt.model.metrics import catalog_scores, exclude_seen, slate_scores

_SHOWN = 5  # problems quoted in the error


@dataclass(frozen=True)
class LoggedClicks:
    """One entry per click, in log order."""

    profiles: list[str]  # the user text the user tower read ("" for none)
    histories: list[np.ndarray]  # catalog rows the user vector was computed from, oldest first
    items: np.ndarray  # (E,) catalog row of the clicked item
    pick_probability: np.ndarray  # (E,) logging policy's P(that pick | the picks before it)
    above: list[np.ndarray]  # catalog rows shown above the clicked item: the picks before it
    slate_size: np.ndarray  # (E,) items in the slate

    def __len__(self) -> int:
        return len(self.items)

    def item_counts(self, num_items: int) -> np.ndarray:
        return np.bincount(self.items, minlength=num_items)


@dataclass(frozen=True)
class LoggedImpressions:
    """One entry per served slate, in log order."""

    profiles: list[str]
    histories: list[np.ndarray]
    shown: np.ndarray  # (S, K) catalog rows in display order, -1 after a short slate's end
    clicked: np.ndarray  # (S, K) bool
    catalog_sizes: np.ndarray  # (S,) rows of the catalog each slate was chosen from (older lines: the whole catalog)

    def __getitem__(self, rows: slice) -> LoggedImpressions:
        return LoggedImpressions(self.profiles[rows], self.histories[rows], self.shown[rows], self.clicked[rows],
                                 self.catalog_sizes[rows])

    def __len__(self) -> int:
        return len(self.shown)


@dataclass(frozen=True)
class Log:
    """What a log folder teaches: its clicks and its slates."""

    clicks: LoggedClicks
    impressions: LoggedImpressions


def read_clicks(folder: str | Path) -> pd.DataFrame:
    """The feedback rows of a log folder that are clicks: the last reward of an item of a slate, when above 0."""
    feedback = latest_feedback(folder)
    return feedback[feedback["reward"] > 0]


def read_log(folder: str | Path, item_rows: dict[str, int], skip_orphans: bool = False) -> Log:
    """The clicks and slates of a log folder as examples over the catalog ``item_rows`` (item id -> row).
    Clicks whose slate the folder no longer holds (retention deleted it) are refused, or skipped and counted with
    ``skip_orphans``."""
    contents, problems = LogFolder.read(folder), []
    impressions = contents.impressions
    old = impressions["history_ids"].isna()
    problems += [f"{where}: logged before impression schema version 2, without the user as served"
                 for where in impressions.loc[old, "source"]]
    clicks = contents.feedback[contents.feedback["reward"] > 0]
    orphans = contents.orphans[contents.orphans["reward"] > 0]
    if not skip_orphans:
        problems += [f"{where}: request_id {request!r} has no impression in {folder} (deleted by retention? "
                     "skip_orphans trains without such clicks)"
                     for where, request in orphans[["source", "request_id"]].itertuples(index=False)]
    impressions = impressions[~old].set_index("request_id")
    outside = set()  # requests whose slate or user names an item the catalog lacks
    for request, where, slate, history in zip(impressions.index, impressions["source"], impressions["slate"],
                                              impressions["history_ids"]):
        missing = [i for i in [*history, *slate] if i not in item_rows]
        if missing:
            problems.append(f"{where}: item {missing[0]!r} is not in the training catalog")
            outside.add(request)
    # clicks on old lines or on slates outside the catalog: reported with their impression line
    clicks = clicks[clicks["request_id"].isin(impressions.index) & ~clicks["request_id"].isin(outside)]
    served = impressions.loc[clicks["request_id"]]
    examples = [_example(click, shown, item_rows, problems) for click, shown in
                zip(clicks.itertuples(index=False), served.itertuples(index=False))]
    _refuse(problems, folder)
    if not examples:
        raise ValueError(f"{folder} holds no clicks (feedback with reward > 0) to train on.")
    profiles, histories, items, picks, above, sizes = zip(*examples)
    return Log(LoggedClicks(list(profiles), list(histories), np.asarray(items, dtype=np.int64),
                            np.asarray(picks, dtype=np.float64), list(above), np.asarray(sizes, dtype=np.int64)),
               _slates(impressions, clicks, item_rows))


def _slates(impressions: pd.DataFrame, clicks: pd.DataFrame, item_rows: dict[str, int]) -> LoggedImpressions:
    clicked = set(zip(clicks["request_id"], clicks["item_id"]))
    width = int(impressions["slate"].map(len).max())
    shown, hit = np.full((len(impressions), width), -1, dtype=np.int64), np.zeros((len(impressions), width), bool)
    for row, (request, slate) in enumerate(zip(impressions.index, impressions["slate"])):
        shown[row, : len(slate)] = [item_rows[i] for i in slate]
        hit[row, : len(slate)] = [(request, i) in clicked for i in slate]
    histories = [np.asarray([item_rows[i] for i in ids], dtype=np.int64) for ids in impressions["history_ids"]]
    sizes = impressions["catalog_size"].fillna(len(item_rows)).to_numpy(dtype=np.int64)
    return LoggedImpressions(impressions["user_text"].fillna("").tolist(), histories, shown, hit, sizes)


def _refuse(problems: list[str], folder: str | Path) -> None:
    if problems:
        raise ValueError(f"{len(problems)} log lines cannot be trained on (fix or move them; the log was not "
                         "changed):\n  " + "\n  ".join(problems[:_SHOWN]) +
                         (f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""))


def _example(click, shown, item_rows: dict[str, int], problems: list[str]) -> tuple | None:
    """(profile, history rows, clicked row, pick probability, rows above, slate size), or None with the problem
    noted."""
    if click.item_id not in shown.slate:
        problems.append(f"{click.source}: item {click.item_id!r} was not in the slate of request {click.request_id!r}")
        return None
    position = shown.slate.index(click.item_id)
    history, above = (np.asarray([item_rows[i] for i in ids], dtype=np.int64)
                      for ids in (shown.history_ids, shown.slate[:position]))
    return (shown.user_text or "", history, item_rows[click.item_id], shown.pick_probabilities[position], above,
            len(shown.slate))


def weigh_logged_clicks(clicks: LoggedClicks, encoder: Encoder, log_batch: Callable[[np.ndarray], dict],
                        batch_size: int, config: LossConfig) -> torch.Tensor:
    """(E,) weights of every logged click (``click_weights``), on the encoder's device. The target policy is the
    encoder's model serving: its softmax over the catalog (the user's history excluded) at
    ``config.log_target_temperature``. Training computes it once, from the model as the run starts, and holds it,
    as PPO holds its old policy: weights recomputed from the model being trained favour the clicks it already ranks
    first, so they reinforce themselves (their effective sample share fell from 1.0 to 0.05 within two steps on
    MovieLens-100K). ``log_batch`` turns click rows (B, 1) into user-tower inputs."""
    device = encoder.device
    if config.log_correction == "none":
        return torch.ones(len(clicks), device=device)
    text, catalog = encoder.catalog_tensors()
    chunks = [np.arange(start, min(start + batch_size, len(clicks))) for start in range(0, len(clicks), batch_size)]
    users = encoder.users((log_batch(rows[:, None]) for rows in chunks), text.float().cpu().numpy())
    target, above_mass = [], []
    for rows, user in zip(chunks, torch.from_numpy(users).to(device).split(batch_size)):
        history = pad_rows([clicks.histories[i] for i in rows]).to(device)
        policy = torch.softmax(exclude_seen(catalog_scores(user, catalog), history)
                               / config.log_target_temperature, dim=1)  # (B, N)
        above = pad_rows([clicks.above[i] for i in rows]).to(device)  # (B, K - 1) picks before, -1 padded
        above_mass.append((policy.gather(1, above.clamp(min=0)) * (above >= 0)).sum(1))
        target.append(policy.gather(1, torch.as_tensor(clicks.items[rows], device=device)[:, None])[:, 0])
    return click_weights(torch.cat(target), torch.cat(above_mass), torch.as_tensor(clicks.pick_probability),
                         torch.as_tensor(clicks.slate_size), config).to(device)


def score_logged_slates(slates: LoggedImpressions, encoder: Encoder, impression_batch: Callable[[np.ndarray], dict],
                        batch_size: int) -> torch.Tensor:
    """(S, K) the encoder's scores of every shown item for its user as served (0 after a short slate's end)."""
    text, catalog = encoder.catalog_tensors()
    chunks = [np.arange(start, min(start + batch_size, len(slates))) for start in range(0, len(slates), batch_size)]
    users = torch.from_numpy(encoder.users((impression_batch(rows[:, None]) for rows in chunks),
                                           text.float().cpu().numpy()))
    return slate_scores(users, catalog.float().cpu(), torch.as_tensor(slates.shown))
