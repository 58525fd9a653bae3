"""Exploration where items really arrive: serve -> log -> refresh -> serve over rounds after a time cut, per policy.

    python train.py fit --config configs/games_minilm.yaml          # the model of the world before 2016-05-14
    python scripts/export_index.py --checkpoint runs/games_minilm --out exports/games
    python scripts/simulate_arrivals.py --export exports/games --seeds '[0, 1, 2]'

The export must come from a run with ``data.before`` (the cut) on a dataset with real timestamps; its data settings
name the interactions and items. recsys_tt/offline/arrivals.py describes a round. Every arrival policy
(recsys_tt/offline/policies.py; --directed sets the directed ones' exploration) runs on the same world, users and
seeds; the first is the baseline. Writes under
--out one JSON per seed and policy (as each finishes), arrivals.json (the comparison: paired bootstrap intervals
over (seed, user) pairs), arrivals.png, and prints the table. A (seed, policy) that finished with the same
settings and policy is read back instead of run again, so an interrupted run resumes, seeds run apart combine,
and trying another --directed reruns only the directed policies.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from recsys_tt.cli import run
from recsys_tt.data.amazon import amazon_games
from recsys_tt.data.tables import cut_seconds, parse_timestamps, read_ids
from recsys_tt.export.folder import ExportFolder
from recsys_tt.offline.arrivals import ArrivalConfig, ArrivalWorld, paired_gain, run_arrivals
from recsys_tt.offline.item_refresh import RefreshConfig
from recsys_tt.offline.policies import DIRECTED, ArrivalPolicy, arrival_policies, slug
from recsys_tt.plots import plot_arrivals
from recsys_tt.serving.explore import ExplorationConfig


def _world_tables(export: ExportFolder) -> tuple:
    """(interactions, items, cut) of the data the export was trained on before its cut."""
    hp = export.meta["data_hparams"]
    if hp.get("before") is None:
        raise ValueError(f"{export.folder} was trained without data.before: the simulator needs a model of the world "
                         "before a cut (e.g. configs/games_minilm.yaml).")
    if hp["dataset"] == "amazon-games":
        folder = amazon_games(hp["folder"])
        paths = folder / "interactions.csv", folder / "items.csv"
    elif hp["dataset"] == "files":
        paths = hp["interactions"], hp["items"]
    else:
        raise ValueError(f"data.dataset {hp['dataset']!r} has no real timestamps to let items arrive by.")
    interactions = read_ids(paths[0], ["user_id", "item_id"], ("timestamp",))
    interactions = interactions.assign(timestamp=parse_timestamps(interactions["timestamp"], paths[0]))
    return interactions, read_ids(paths[1], ["item_id"]), cut_seconds(hp["before"])


def _finished(path: Path, settings: dict) -> dict | None:
    """The result a finished (seed, policy) left with these settings, or None (then it runs, afresh)."""
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result if result.pop("settings", None) == settings else None


def compare(results: dict[int, dict[str, dict]], policies: tuple[ArrivalPolicy, ...]) -> dict[str, dict]:
    """Each policy against the first: paired gains in clicks, released-item clicks and held-out NDCG@10 over
    (seed, user), and coverage per seed."""
    baseline, out = policies[0].name, {}
    for policy in policies[1:]:
        name, seeds = policy.name, [s for s in results if {policy.name, baseline} <= set(results[s])]
        if not seeds:
            continue
        pairs = [(results[s][name], results[s][baseline]) for s in seeds]
        ndcg = [_both(p["ndcg@10"], b["ndcg@10"]) for p, b in pairs]
        out[name] = {"seeds": seeds,
                     "clicks": paired_gain([(p["clicks"], b["clicks"]) for p, b in pairs]),
                     "released_clicks": paired_gain([(p["released_clicks"], b["released_clicks"]) for p, b in pairs]),
                     "ndcg@10": paired_gain(ndcg),
                     "coverage": [p["coverage"] / b["coverage"] - 1 for p, b in pairs]}
    return out


def _both(first: dict[str, float], second: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """The two mappings restricted to the users both hold (NDCG pairs users measured under both policies)."""
    common = first.keys() & second.keys()
    return {u: first[u] for u in common}, {u: second[u] for u in common}


def print_table(results: dict[int, dict[str, dict]], comparison: dict[str, dict],
                policies: tuple[ArrivalPolicy, ...]) -> None:
    print(f"\n{'policy':<46} {'clicks/user':>11} {'released':>9} {'coverage':>9} {'NDCG@10':>8}   vs "
          f"{policies[0].name}: clicks, released clicks, coverage, NDCG@10 (95% paired intervals)")
    for policy in policies:
        runs = [r[policy.name] for r in results.values() if policy.name in r]
        if not runs:
            continue
        per_user = np.mean([sum(r["clicks"].values()) / max(len(r["clicks"]), 1) for r in runs])
        released = np.mean([sum(r["released_clicks"].values()) for r in runs])
        line = (f"{policy.name:<46} {per_user:>11.3f} {released:>9.0f} {np.mean([r['coverage'] for r in runs]):>9.3f}"
                f" {np.mean([np.mean(list(r['ndcg@10'].values())) for r in runs]):>8.4f}")
        if policy.name in comparison:
            c = comparison[policy.name]
            coverage = f"{np.mean(c['coverage']):+.1%}"
            line += "   " + ", ".join([_gain(c["clicks"]), _gain(c["released_clicks"]), coverage, _gain(c["ndcg@10"])])
        print(line)


def _gain(gain: dict[str, float]) -> str:
    """A paired gain as a relative change, or as a difference per seed when the baseline had none."""
    if np.isnan(gain["gain"]):
        return f"{gain['difference']:+.1f}/seed [{gain['difference_low']:+.1f}, {gain['difference_high']:+.1f}]"
    return f"{gain['gain']:+.1%} [{gain['low']:+.1%}, {gain['high']:+.1%}]"


def main(export: str, seeds: list[int] | None = None, rounds: int = 10, users_per_round: int = 1000, k: int = 10,
         satiation: float = 0.5, ignore_limit: int = 3, refresh_steps: int = 30, prior_precision: float = 20.0,
         cold_offset: bool = True, eval_users: int = 2000, directed: ExplorationConfig = DIRECTED,
         policies: list[str] | None = None, out: str = "runs/arrivals") -> None:
    """Run every arrival policy on the same world for each seed.

    Args:
        export: export of a model trained on the data before a cut (data.before).
        seeds: seeds of users sampled per round, slates and clicks (one full comparison each).
        rounds: rounds after the cut, of equal numbers of real interactions.
        users_per_round: users served per round, sampled from those active in it.
        k: slate size.
        satiation: each earlier impression of an item without a click multiplies its click probability by this.
        ignore_limit: the server stops showing an item a user skipped this many times (every policy).
        refresh_steps: L-BFGS iterations of each round's refresh of the item vectors from the log so far.
        prior_precision: how strongly a refresh keeps each item vector where it was.
        cold_offset: refreshes also fit one offset shared by every item placed by its text (released ones included).
        eval_users: users whose held-out last item measures NDCG@10 after each round.
        directed: the exploration of the directed policies (default: recsys_tt.offline.policies.DIRECTED).
        policies: run only these names of the arrival policies (default: all).
        out: output folder (a policy's export and log are replaced when it runs; finished ones are kept).
    """
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("recsys_tt.offline.arrivals").setLevel(logging.INFO)  # a line per round
    every = arrival_policies(directed)
    chosen = [p for p in every if policies is None or p.name in policies]
    if policies is not None and len(chosen) != len(policies):
        raise ValueError(f"policies must be names of {[p.name for p in every]}, got {policies}.")
    base = ExportFolder.load(export)
    interactions, items, cut = _world_tables(base)
    refresh = RefreshConfig(refresh_steps, prior_precision, max_slates=20_000, cold_offset=cold_offset)
    config = ArrivalConfig(rounds, users_per_round, k, satiation, ignore_limit, refresh, eval_users)
    world = ArrivalWorld.build(interactions, cut, rounds, set(base.item_ids))
    print(f"{len(world.release)} items arrive over {rounds} rounds; {len(world.wanted)} users with later items "
          f"({sum(not h for h in world.start.values())} arrive after the cut)", flush=True)
    settings = {"export": str(Path(export).resolve()), "rounds": rounds, "users_per_round": users_per_round, "k": k,
                "satiation": satiation, "ignore_limit": ignore_limit, "refresh_steps": refresh_steps,
                "prior_precision": prior_precision, "cold_offset": cold_offset, "eval_users": eval_users}
    root, results = Path(out), {}
    for seed in seeds or [0]:
        results[seed] = {}
        for policy in chosen:
            began, folder = time.perf_counter(), root / f"seed{seed}" / slug(policy.name)
            ran_with = {**settings, "policy": asdict(policy)}  # another directed setting leaves the others' runs valid
            done = _finished(folder / "result.json", ran_with)
            if done is not None:  # a resumed run: this seed and policy ran with these settings
                results[seed][policy.name] = done
                continue
            results[seed][policy.name] = run_arrivals(world, items, Path(export), policy, config, folder, seed)
            (folder / "result.json").write_text(json.dumps({"settings": ran_with, **results[seed][policy.name]}))
            print(f"seed {seed}, {policy.name}: {time.perf_counter() - began:.0f}s", flush=True)
    comparison = compare(results, every)
    print_table(results, comparison, every)
    summary = {"settings": {**settings, "seeds": seeds or [0], "directed": asdict(directed)}, "comparison": comparison,
               "rounds": {seed: {name: r["rounds"] for name, r in by_policy.items()}
                          for seed, by_policy in results.items()}}
    (root / "arrivals.json").write_text(json.dumps(summary, indent=2))
    plot = plot_arrivals(summary["rounds"], root / "arrivals.png")
    print(f"\nplot: {plot}; numbers: {root / 'arrivals.json'}")


if __name__ == "__main__":
    run(main)
