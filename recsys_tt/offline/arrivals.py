"""A simulator where items really arrive: serve -> log -> refresh -> serve over rounds after a time cut.

The world is an interactions table with real timestamps (Amazon Video Games) and a model trained on what happened
before a cut (``data.before``). The time after the cut is split into rounds of equal activity. Each round:
1. the items first reviewed in that round are released into the export with their text only (no id vector, no
   interactions yet; ``add_items``);
2. each sampled user active in the round (one with a real interaction in it, including users who arrive after the
   cut: they start with their first later item as their history) is served one slate through the real serving
   path, as a new user given by their items so far and a ``user_key``, so the server's ignore memory and the
   uncertainty of directed exploration work as in production;
3. the user examines position j with probability 1 / log2(j + 2) and clicks an examined item among their real
   later items (released by then); each earlier impression of that item without a click multiplies the click
   probability by ``satiation``; a click joins the history;
4. the export is refreshed from the log so far (``refresh_item_vectors``), which is the round's fine-tuning.

Each user's last later item is held out (never clickable): the held-out NDCG@10 after each round ranks it for the
user as they are then, over the catalog released so far. Clicks are kept per user, so policies run on the same
world and seed can be compared user by user (paired).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from recsys_tt.data.examples import pad_rows
from recsys_tt.export.catalog import add_items
from recsys_tt.export.folder import ExportFolder
from recsys_tt.model.metrics import catalog_scores, exclude_seen, ranking_metrics, target_ranks
from recsys_tt.offline.item_refresh import RefreshConfig, refresh_item_vectors
from recsys_tt.offline.policies import ArrivalPolicy
from recsys_tt.offline.simulator import examination
from recsys_tt.serving.recommender import Recommender
from recsys_tt.serving.requests import RecommendRequest, ServingConfig

log = logging.getLogger(__name__)


@dataclass
class ArrivalWorld:
    """What is known at the cut, what arrives in each round, and what each user wants later (item ids)."""

    release: dict[str, int]  # item id -> the round (0-based) it is first reviewed in, for items new after the cut
    start: dict[str, list[str]]  # user -> items known at the cut, oldest first (empty for users who arrive later)
    wanted: dict[str, list[str]]  # user -> later items, in time order, without the held-out one
    held_out: dict[str, str]  # user -> their last later item
    active: list[list[str]]  # per round, the users with a real interaction in it
    bounds: list[float]  # round boundaries (Unix seconds): round r is [bounds[r], bounds[r + 1])

    @classmethod
    def build(cls, interactions: pd.DataFrame, cut: float, rounds: int, known_items: set[str]) -> ArrivalWorld:
        """``interactions`` (user_id, item_id, timestamp; ids as strings) from a file in time order per user;
        ``known_items`` the export's catalog (the items seen before the cut)."""
        frame = interactions.sort_values(["user_id", "timestamp"], kind="stable")
        later = frame[frame["timestamp"] >= cut]
        bounds = [cut, *np.quantile(later["timestamp"], np.linspace(0, 1, rounds + 1)[1:-1]), np.inf]
        round_of = np.searchsorted(bounds, later["timestamp"].to_numpy(), side="right") - 1
        first_seen = later.assign(round=round_of).groupby("item_id")["round"].min()
        release = {item: int(r) for item, r in first_seen.items() if item not in known_items}
        start = frame[frame["timestamp"] < cut].groupby("user_id")["item_id"].apply(list).to_dict()
        wanted, held_out = {}, {}
        for user, items in later.groupby("user_id")["item_id"]:
            items = list(dict.fromkeys(i for i in items if i not in set(start.get(user, []))))
            if len(items) >= 2:  # one to hold out and at least one to want
                held_out[user], wanted[user] = items[-1], items[:-1]
        active = [sorted(set(later["user_id"][round_of == r]) & set(wanted)) for r in range(rounds)]
        return cls(release, {u: start.get(u, []) for u in wanted}, wanted, held_out, active, bounds)

    def released_by(self, round_index: int) -> set[str]:
        return {item for item, r in self.release.items() if r <= round_index}


@dataclass(frozen=True)
class ArrivalConfig:
    """The simulation's settings, shared by every policy it compares."""

    rounds: int = 10
    users_per_round: int = 1000
    k: int = 10
    satiation: float = 0.5
    ignore_limit: int = 3
    refresh: RefreshConfig = field(default_factory=lambda: RefreshConfig(max_slates=20_000))
    eval_users: int = 2000
    placeholder: str = "A new product"

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.users_per_round < 1 or self.k < 1 or not 0 <= self.satiation <= 1:
            raise ValueError(f"arrivals need rounds, users_per_round, k >= 1 and satiation in [0, 1]; got {self}.")


@dataclass
class _Users:
    histories: dict[str, list[str]]
    wanted: dict[str, set[str]]
    ignored: dict[tuple[str, str], int] = field(default_factory=dict)


def run_arrivals(world: ArrivalWorld, items: pd.DataFrame, base_export: Path, policy: ArrivalPolicy,
                 config: ArrivalConfig, out: Path, seed: int) -> dict:
    """Runs one policy for ``config.rounds`` rounds from a copy of ``base_export``; returns per-round and per-user
    results. ``items`` holds every item's id and text columns (the released ones are added from it)."""
    folder, log_dir = out / "export", out / "log"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(base_export, folder)
    start = ExportFolder.load(folder)
    catalog_items, (novelty, new_item_novelty) = set(start.item_ids), _novelty(start)
    users = _Users({u: list(h) for u, h in world.start.items()}, {u: set(w) for u, w in world.wanted.items()})
    serving = ServingConfig(exploration=policy.exploration, ignore_limit=config.ignore_limit)
    eval_users = _sample(sorted(world.held_out), config.eval_users, seed, -1)
    per_round, clicks, released_clicks, shown_all = [], {}, {}, set()
    for r in range(config.rounds):
        began = time.perf_counter()
        new = [item for item, when in world.release.items() if when == r]
        if new:
            _release(folder, items, new, policy, config, out / f"released_{r}.csv")
            catalog_items |= set(new)
        recommender = Recommender.load(folder, serving, log_dir=log_dir)
        served = _sample(world.active[r], config.users_per_round, seed, r)
        round_clicks, shown = _serve(recommender, users, served, catalog_items, world, config, seed * 1_000_003 + r)
        round_new = sum(fresh for _, fresh in round_clicks.values())
        recommender.log.close()
        for user, (total, fresh) in round_clicks.items():
            clicks[user] = clicks.get(user, 0) + total
            released_clicks[user] = released_clicks.get(user, 0) + fresh
        shown_all |= shown
        refreshed = _refresh(folder, log_dir, policy, config)
        quality = held_out_ndcg(ExportFolder.load(folder), users, world, eval_users)
        per_round.append({"round": r + 1, "users": len(served), "released": len(new), "catalog": len(catalog_items),
                          "clicks": sum(t for t, _ in round_clicks.values()), "released_clicks": round_new,
                          "coverage": len(shown) / len(catalog_items), "refreshed": refreshed,
                          "ndcg@10": float(np.mean(list(quality.values()))) if quality else float("nan"),
                          "novelty": float(np.mean([novelty.get(i, new_item_novelty) for i in shown])) if shown
                          else 0.0, "seconds": round(time.perf_counter() - began, 1)})
        done = per_round[-1]
        log.info("%s, round %d/%d: %d users, %d clicks (%d on released items), coverage %.4f, NDCG@10 %.4f, %.0fs",
                 policy.name, r + 1, config.rounds, done["users"], done["clicks"], round_new, done["coverage"],
                 done["ndcg@10"], done["seconds"])
    return {"policy": policy.name, "rounds": per_round, "clicks": clicks, "released_clicks": released_clicks,
            "ndcg@10": quality, "coverage": len(shown_all) / len(catalog_items), "shown_items": len(shown_all)}


def _sample(users: list[str], count: int, seed: int, round_index: int) -> list[str]:
    """The same users for every policy of a seed and round."""
    if len(users) <= count:
        return list(users)
    rng = np.random.default_rng([seed, round_index + 1])
    return sorted(rng.choice(users, count, replace=False).tolist())


def _novelty(export: ExportFolder) -> tuple[dict[str, float], float]:
    """Item id -> novelty (-log2 of the share of users who had it before the cut, add-one smoothed), and that of an
    item new since."""
    return (dict(zip(export.item_ids, (-np.log2(export.item_popularity)).tolist())),
            float(np.log2(len(export.users) + 1.0)))


def _release(folder: Path, items: pd.DataFrame, new: list[str], policy: ArrivalPolicy, config: ArrivalConfig,
             path: Path) -> None:
    rows = items[items["item_id"].isin(new)]
    if not policy.text_prior:  # every new item reads the same: its prior mean says nothing of what it is
        text_columns = [c for c in rows.columns if c != "item_id"]
        rows = rows.assign(**{c: config.placeholder for c in text_columns})
    rows.to_csv(path, index=False)
    add_items(folder, path)


def _serve(recommender: Recommender, users: _Users, served: list[str], catalog: set[str], world: ArrivalWorld,
           config: ArrivalConfig, seed: int) -> tuple[dict[str, tuple[int, int]], set[str]]:
    """One slate for each served user; returns user -> (clicks, clicks on released items), and the items shown."""
    rng, looks = np.random.default_rng(seed), examination(config.k)
    requests, who = [], []
    for user in served:
        history = [i for i in users.histories[user] if i in catalog]
        if not history:  # a user who arrives after the cut: their first later item that exists starts them
            first = next((i for i in world.wanted[user] if i in catalog and i in users.wanted[user]), None)
            if first is None:
                continue
            users.histories[user].append(first)
            users.wanted[user].discard(first)
            history = [first]
        requests.append(RecommendRequest(recent_item_ids=history[-100:], k=config.k, user_key=user,
                                         seed=int(rng.integers(2**31))))
        who.append(user)
    recommender.warm_cache(requests)
    out, shown = {}, set()
    for user, request in tqdm(list(zip(who, requests)), desc="serving", unit="user", mininterval=2.0, leave=False):
        response = recommender.recommend(request)
        total = fresh = 0
        for position, item in enumerate(i["item_id"] for i in response["items"]):
            shown.add(item)
            key = (user, item)
            liked = item in users.wanted[user] and rng.random() < config.satiation ** users.ignored.get(key, 0)
            if liked and rng.random() < looks[position]:
                recommender.feedback(response["request_id"], item, 1.0)
                users.wanted[user].discard(item)
                users.histories[user].append(item)
                total += 1
                fresh += item in world.release
            else:
                users.ignored[key] = users.ignored.get(key, 0) + 1
        out[user] = (total, fresh)
    return out, shown


def _refresh(folder: Path, log_dir: Path, policy: ArrivalPolicy, config: ArrivalConfig) -> bool:
    try:
        refresh_item_vectors(folder, log_dir, replace(config.refresh, log_impressions=policy.log_impressions))
    except ValueError as err:
        if "holds no clicks" not in str(err):
            raise
        return False
    return True


def held_out_ndcg(export: ExportFolder, users: _Users, world: ArrivalWorld, sample: list[str]) -> dict[str, float]:
    """User -> NDCG@10 of their held-out item (for sampled users whose item is released by now), ranked for the user
    as they are now (their history excluded) over the catalog released so far."""
    rows = export.item_rows
    keep = [u for u in sample if world.held_out[u] in rows and any(i in rows for i in users.histories[u])]
    if not keep:
        return {}
    histories = [np.asarray([rows[i] for i in users.histories[u] if i in rows], dtype=np.int64) for u in keep]
    vectors = export.new_user_vectors([""] * len(keep), histories)
    scores = exclude_seen(catalog_scores(torch.from_numpy(vectors), torch.from_numpy(export.vectors)),
                          pad_rows(histories))
    ranks = target_ranks(scores, torch.as_tensor([rows[world.held_out[u]] for u in keep]))
    return dict(zip(keep, ranking_metrics(ranks, (10,))["ndcg@10"].tolist()))


def paired_gain(runs: list[tuple[dict[str, float], dict[str, float]]], resamples: int = 2000,
                seed: int = 0) -> dict[str, float]:
    """Relative gain sum(policy - baseline) / sum(baseline) over (seed, user) pairs, and the difference per seed
    sum(policy - baseline) / seeds (what remains when the baseline sums to 0), each with a 95% paired bootstrap
    interval: users are resampled within each seed. ``runs`` holds one (policy, baseline) pair of user -> value
    mappings per seed; a user missing from one side counts 0 there."""
    rng, parts = np.random.default_rng(seed), []
    for policy, baseline in runs:
        users = sorted(set(policy) | set(baseline))
        parts.append(np.array([[policy.get(u, 0.0), baseline.get(u, 0.0)] for u in users]).reshape(-1, 2))
    draws = np.array([_gains([p[rng.integers(len(p), size=len(p))] for p in parts]) for _ in range(resamples)])
    relative = draws[:, 0][~np.isnan(draws[:, 0])]  # NaN where a resample's baseline sums to 0
    low, high = np.percentile(relative, [2.5, 97.5]) if len(relative) else (np.nan, np.nan)
    low_difference, high_difference = np.percentile(draws[:, 1], [2.5, 97.5])
    gain, difference = _gains(parts)
    return {"gain": gain, "low": float(low), "high": float(high), "difference": difference,
            "difference_low": float(low_difference), "difference_high": float(high_difference)}


def _gains(parts: list[np.ndarray]) -> tuple[float, float]:
    """(relative gain, difference per part) of column 0 over column 1, summed over (n, 2) arrays."""
    policy, baseline = sum(part.sum(axis=0) for part in parts)
    relative = float((policy - baseline) / baseline) if baseline else float("nan")
    return relative, float((policy - baseline) / len(parts))
