"""An interactive simulator on real interactions, for choosing exploration settings from evidence.

Each simulated user starts with what the export knows of them and likes their real later interactions, which
the export was not trained on (a ``future`` table from scripts/split_by_time.py); without one, users start with
the first ``start_fraction`` of their known history and like the rest. Every round, the policy serves
each user a slate through the real serving path (a Recommender answering a request with the user's profile text
and history). The user examines position j with probability 1 / log2(j + 2) and clicks an examined item they
like; a clicked item joins the history (so the next user vector, and for text towers the user text, changes) and
is liked no more. Slates and clicks go to the propensity log like a server's.

Caveat without a future table: the export was trained on the items a user "likes", so the model has seen
those preferences; that favours exploitation, so exploration's benefit is understated.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from recsys_tt.data.examples import pad_rows
from recsys_tt.data.propensity_log import PropensityLog, read_impressions
from recsys_tt.data.tables import read_ids
from recsys_tt.export.folder import ExportFolder
from recsys_tt.model.metrics import (
    catalog_coverage,
    catalog_scores,
    discount,
    exclude_seen,
    intra_list_diversity,
    novelty,
    ranking_metrics,
    target_ranks,
)
from recsys_tt.offline.ope import LoggedSlates, evaluate_target
from recsys_tt.offline.policies import OPE_LOGGING_POLICY, SIMULATED_POLICIES, describe
from recsys_tt.serving.explore import ExplorationConfig, position_marginals
from recsys_tt.serving.recommender import Recommender
from recsys_tt.serving.requests import RecommendRequest, ServingConfig


@dataclass
class SimulatedUsers:
    profiles: list[str]
    histories: list[list[int]]  # item rows, oldest first
    liked: list[set[int]]  # item rows the user would click
    held_out: list[int] | None = None  # per user, a later item never offered to click: the model's test target

    @classmethod
    def from_export(cls, export: ExportFolder, start_fraction: float = 0.5, users: int | None = None,
                    seed: int = 0, future: str | None = None, hold_out_last: bool = False) -> SimulatedUsers:
        """Users with at least one starting item and one liked item; ``users`` samples that many of them.

        With ``future`` (a table of user_id, item_id that the export was not trained on, e.g. from
        scripts/split_by_time.py) users start with everything the export knows of them and like their future
        items. Without it they start with the first ``start_fraction`` of their known history and like the rest.
        ``hold_out_last`` keeps each user's last future item (in file order, which split_by_time keeps in time
        order) out of what they click, as the held-out target of ``held_out_metrics``.
        """
        if future is None and not 0 < start_fraction < 1:
            raise ValueError(f"start_fraction must be in (0, 1), got {start_fraction}.")
        later = _future_rows(export, future) if future is not None else None
        profiles, histories, liked, held_out = [], [], [], []
        for index, (user_id, profile) in enumerate(zip(export.user_ids, export.users["profile"])):
            known = export.split.history(index, "all").tolist()
            start = known if later is not None else known[: int(len(known) * start_fraction)]
            wanted = list(later.get(user_id, [])) if later is not None else known[len(start):]
            started = set(start)
            wanted = [row for row in wanted if row not in started]
            target = wanted.pop() if hold_out_last and wanted else -1
            if start and wanted:
                profiles.append(profile)
                histories.append(start)
                liked.append(set(wanted) - {target})
                held_out.append(target)
        chosen = np.arange(len(profiles))
        if users is not None and users < len(chosen):
            chosen = np.sort(np.random.default_rng(seed).choice(chosen, users, replace=False))
        return cls([profiles[i] for i in chosen], [histories[i] for i in chosen], [liked[i] for i in chosen],
                   [held_out[i] for i in chosen] if hold_out_last else None)

    def __len__(self) -> int:
        return len(self.profiles)


def _future_rows(export: ExportFolder, path: str) -> dict[str, list[int]]:
    """user_id -> catalog rows of that user's future items (items outside the catalog are dropped)."""
    frame = read_ids(path, ["user_id", "item_id"])
    rows = frame["item_id"].map(export.item_rows)
    frame = frame.assign(row=rows)[rows.notna()]
    return frame.groupby("user_id")["row"].apply(lambda r: r.astype(int).tolist()).to_dict()


def examination(k: int) -> np.ndarray:
    """(k,) probability that a user looks at each position (the DCG discount)."""
    return discount(np.arange(k))


@dataclass
class RoundLog:
    request_ids: list[str]
    shown: np.ndarray  # (U, k) item rows
    clicks: np.ndarray  # (U,) clicks per user


def serve_round(recommender: Recommender, users: SimulatedUsers, k: int, seed: int, update: bool = True) -> RoundLog:
    """Serves every user one slate, draws clicks, logs them as feedback and (if ``update``) moves clicks to history."""
    item_ids = recommender.export.item_ids
    rows_of = recommender.export.item_rows
    requests = [RecommendRequest(text=p, recent_item_ids=item_ids[h].tolist(), k=k, seed=seed * 1_000_003 + u)
                for u, (p, h) in enumerate(zip(users.profiles, users.histories))]
    recommender.warm_cache(requests)
    rng, looks = np.random.default_rng(seed), examination(k)
    shown, clicks, request_ids = np.full((len(users), k), -1), np.zeros(len(users)), []
    for u, request in enumerate(tqdm(requests, desc=f"round seed {seed}", unit="user", mininterval=1.0, leave=False)):
        response = recommender.recommend(request)
        request_ids.append(response["request_id"])
        rows = [rows_of[item["item_id"]] for item in response["items"]]
        shown[u, : len(rows)] = rows
        for position, row in enumerate(rows):
            if row in users.liked[u] and rng.random() < looks[position]:
                clicks[u] += 1
                if recommender.log is not None:
                    recommender.feedback(response["request_id"], item_ids[row], 1.0)
                if update:
                    users.liked[u].discard(row)
                    users.histories[u].append(row)
    return RoundLog(request_ids, shown, clicks)


def run_policy(export: ExportFolder, users: SimulatedUsers, serving: ServingConfig, rounds: int, k: int,
               seed: int = 0, log_dir: str | None = None,
               retrain: Callable[[int], ExportFolder] | None = None) -> dict:
    """Runs ``rounds`` rounds of one policy from the same starting users; returns per-round clicks and metrics.

    With ``retrain``, ``retrain(round)`` runs after each round (to fine-tune on the log so far) and returns the
    export that serves the next one. Beyond-accuracy metrics use the first export's popularity and vectors, so
    loops stay comparable. Users with held-out items add the held-out metrics of the model that served each round
    and of the last model.
    """
    users = copy.deepcopy(users)
    popularity, vectors, catalog = export.item_popularity, export.vectors, len(export.items)
    log = PropensityLog(log_dir) if log_dir else None
    recommender, logs, held_out = Recommender(export, serving, log=log), [], []
    for r in range(rounds):
        if users.held_out is not None:
            held_out.append(held_out_metrics(recommender.export, users))
        logs.append(serve_round(recommender, users, k, seed + r))
        if retrain is not None:
            recommender = Recommender(retrain(r), serving, log=log)
    if log is not None:
        log.close()
    shown = np.concatenate([round_log.shown for round_log in logs])
    clicks_per_round = np.array([round_log.clicks.mean() for round_log in logs])
    out = {"clicks_per_round": clicks_per_round.tolist(), "cumulative_clicks": float(clicks_per_round.sum()),
           "coverage": catalog_coverage(shown, catalog), "novelty": novelty(shown, popularity),
           "diversity": intra_list_diversity(shown, vectors),
           "coverage_per_round": [catalog_coverage(round_log.shown, catalog) for round_log in logs]}
    if users.held_out is not None:
        out |= {"held_out_per_round": held_out, "held_out_final": held_out_metrics(recommender.export, users)}
    return out


def held_out_metrics(export: ExportFolder, users: SimulatedUsers, ks: tuple[int, ...] = (10,)) -> dict[str, float]:
    """Full-ranking metrics of each user's held-out item for the user as served now (profile and history so far,
    the history excluded from the ranking), as the leave-one-out evaluation ranks a test item."""
    keep = [u for u, target in enumerate(users.held_out) if target >= 0]
    histories = [np.asarray(users.histories[u], dtype=np.int64) for u in keep]
    user_vectors = export.new_user_vectors([users.profiles[u] for u in keep], histories)
    scores = exclude_seen(catalog_scores(torch.from_numpy(user_vectors), torch.from_numpy(export.vectors)),
                          pad_rows(histories))
    ranks = target_ranks(scores, torch.as_tensor([users.held_out[u] for u in keep]))
    return {name: float(values.mean()) for name, values in ranking_metrics(ranks, ks).items()}


def true_values(log_dir: str, liked: dict[str, set[int]], targets: dict[str, ExplorationConfig], k: int,
                samples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Expected clicks per slate of each target policy on the logged requests, from the click model itself.

    ``liked`` maps each logged request id to the rows its user liked when it was served.
    """
    rng, looks = np.random.default_rng(seed), examination(k)
    impressions = read_impressions(log_dir)
    out = {}
    for name, target in targets.items():
        total = 0.0
        for request_id, rows, scores, history in impressions[["request_id", "candidate_rows", "candidate_scores",
                                                              "history_length"]].itertuples(index=False):
            temperature = target.user_temperature(int(history))
            marginals = position_marginals(np.asarray(scores), k, target, temperature, rng, samples)
            relevant = np.isin(np.asarray(rows), list(liked[request_id]))
            total += float(looks @ marginals[:, relevant].sum(axis=1))
        out[name] = total / len(impressions)
    return out


def log_repeated_round(recommender: Recommender, users: SimulatedUsers, k: int, replications: int,
                       first_seed: int = 0) -> dict[str, set[int]]:
    """Serves the same first round ``replications`` times (users are not updated) into the recommender's log, then
    closes the log; returns the items each request's user likes, by request id (the truth OPE is checked against)."""
    liked = {}
    for replication in range(replications):
        log = serve_round(recommender, users, k, seed=first_seed + replication, update=False)
        liked |= {request: set(users.liked[u]) for u, request in enumerate(log.request_ids)}
    recommender.log.close()
    return liked


CHECKED = ("IPS", "SNIPS", "DR")


def check_ope(export: ExportFolder, users: SimulatedUsers, k: int, replications: int, samples: int,
               out: Path) -> list[dict]:
    """Logs the first round ``replications`` times with OPE_LOGGING_POLICY, then estimates every policy from it."""
    folder = out / "logs" / "ope_logging_policy"
    serving = ServingConfig(exploration=replace(OPE_LOGGING_POLICY, propensity_samples=samples))
    recommender = Recommender(export, serving, log=PropensityLog(folder))
    liked = log_repeated_round(recommender, users, k, replications, first_seed=10_000)
    logged, rows = LoggedSlates.from_log(folder), []
    inverse = logged.inverse_propensities(np.random.default_rng(0))
    for policy in SIMULATED_POLICIES:
        name = describe(policy)
        truth = true_values(str(folder), liked, {name: policy}, k, samples=samples)[name]
        estimates = evaluate_target(logged, policy, samples=samples, bootstrap=300, inverse_logging=inverse)
        rows.append({"policy": name, "true": truth, **estimates,
                     "covered": {e: estimates[e]["low"] <= truth <= estimates[e]["high"] for e in CHECKED}})
    return rows
