"""Every PNG the project writes: training curves, exploration, retraining, new-user, ablation, arrival and
unseen-item boost results (no Lightning)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    """matplotlib's pyplot on the file-only backend (training machines have no screen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def plot_curves(metrics_csv: str | Path, out: str | Path, metric: str = "ndcg@10") -> Path:
    """Plots train/loss and val/<metric> (and val/recall@10) against the step from a CSVLogger file."""
    plt = _pyplot()
    frame = pd.read_csv(metrics_csv)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    if "train/loss" in frame:
        loss = frame[["step", "train/loss"]].dropna()
        left.plot(loss["step"], loss["train/loss"], lw=1)
    left.set(xlabel="step", ylabel="train/loss", title="training loss")
    for name in (f"val/{metric}", "val/recall@10"):
        if name in frame:
            curve = frame[["step", name]].dropna()
            right.plot(curve["step"], curve[name], marker="o", label=name)
    right.set(xlabel="step", title="validation (full ranking)")
    if right.get_legend_handles_labels()[0]:  # a run without validation has nothing to label
        right.legend()
    return _save(plt, fig, out)


def plot_exploration(results: dict[str, dict], out: str | Path) -> Path:
    """Exploration trade-off: cumulative clicks per user by round, and total clicks against catalog coverage."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, result in results.items():
        cumulative = pd.Series(result["clicks_per_round"]).cumsum()
        left.plot(range(1, len(cumulative) + 1), cumulative, marker=".", label=name)
        right.scatter(result["coverage"], result["cumulative_clicks"], s=40)
        right.annotate(name, (result["coverage"], result["cumulative_clicks"]), fontsize=8,
                       xytext=(4, 3), textcoords="offset points")
    left.set(xlabel="round", ylabel="cumulative clicks per user", title="long-run clicks")
    left.legend(fontsize=8)
    right.set(xlabel="catalog coverage (items shown / catalog)", ylabel="clicks per user, all rounds",
              title="exploitation vs exploration")
    return _save(plt, fig, out)


def plot_retraining(results: dict[str, dict], out: str | Path) -> Path:
    """Serve -> log -> retrain loops side by side: cumulative clicks, coverage and held-out NDCG@10 by round."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, result in results.items():
        rounds = range(1, len(result["clicks_per_round"]) + 1)
        axes[0].plot(rounds, pd.Series(result["clicks_per_round"]).cumsum(), marker=".", label=name)
        axes[1].plot(rounds, result["coverage_per_round"], marker=".", label=name)
        ndcg = [m["ndcg@10"] for m in result["held_out_per_round"]] + [result["held_out_final"]["ndcg@10"]]
        axes[2].plot(range(len(ndcg)), ndcg, marker=".", label=name)
    axes[0].set(xlabel="round", ylabel="cumulative clicks per user", title="clicks")
    axes[1].set(xlabel="round", ylabel="items shown / catalog", title="catalog coverage per round")
    axes[2].set(xlabel="retrainings", ylabel="NDCG@10 of held-out later items", title="model quality")
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(plt, fig, out)


def plot_new_users(rows: list[dict], metrics: list[str], out: str | Path) -> Path:
    """New users: each of ``metrics`` per ranker against the number of items known about the user, side by side."""
    plt = _pyplot()
    frame = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for ranker, part in frame.groupby("ranker", sort=False):
            ax.plot(part["context_items"], part[metric], marker="o", label=ranker)
        ax.set(xlabel="items known about the user (0 = profile text only)", ylabel=metric,
               title=f"users unseen in training: {metric}")
        ax.legend(fontsize=8)
    return _save(plt, fig, out)


def plot_ablation(results: dict[str, dict], out: str | Path) -> Path:
    """Per ablation row ("dataset | row"): test NDCG@10 on the standard split, and of cold and warm test items."""
    plt = _pyplot()
    names = list(results)
    bars = {"all items": [r["full"]["test_ndcg@10"] for r in results.values()],
            "warm items": [r["cold"]["test_warm_ndcg@10"] for r in results.values()],
            "cold items": [r["cold"]["test_cold_ndcg@10"] for r in results.values()]}
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4.5))
    width = 0.8 / len(bars)
    for i, (label, values) in enumerate(bars.items()):
        ax.bar([x + i * width for x in range(len(names))], values, width, label=label)
    ax.set_xticks([x + width for x in range(len(names))], [n.replace(" | ", "\n") for n in names], fontsize=7,
                  rotation=30, ha="right")
    ax.set(ylabel="test NDCG@10 (full ranking)", title="What the language model adds")
    ax.legend(fontsize=8)
    return _save(plt, fig, out)


def plot_arrivals(rounds: dict, out: str | Path) -> Path:
    """Arrival simulations by round, mean over seeds (band: lowest to highest seed): cumulative clicks, cumulative
    clicks on released items, coverage and held-out NDCG@10. ``rounds``: seed -> policy -> per-round records."""
    plt = _pyplot()
    panels = (("clicks", True, "cumulative clicks"), ("released_clicks", True, "cumulative clicks on released items"),
              ("coverage", False, "items shown / catalog"), ("ndcg@10", False, "held-out NDCG@10"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    policies = list(dict.fromkeys(name for by_policy in rounds.values() for name in by_policy))
    for name in policies:
        runs = [pd.DataFrame(by_policy[name]) for by_policy in rounds.values() if name in by_policy]
        for ax, (metric, cumulative, title) in zip(axes, panels):
            values = np.array([r[metric].cumsum() if cumulative else r[metric] for r in runs], dtype=float)
            x = runs[0]["round"]
            ax.plot(x, values.mean(axis=0), marker=".", label=name)
            ax.fill_between(x, values.min(axis=0), values.max(axis=0), alpha=0.15)
            ax.set(xlabel="round", title=title)
    axes[0].legend(fontsize=8)
    return _save(plt, fig, out)


def plot_unseen_boost(results: dict[str, dict], out: str | Path) -> Path:
    """NDCG@10 of all, cold-target and warm-target users, and the cold / warm ratio, against the unseen-item boost;
    ``results``: boost -> {"val" | "test": {"all" | "cold" | "warm": NDCG@10}}."""
    plt = _pyplot()
    boosts = [float(b) for b in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, style in (("val", "--"), ("test", "-")):
        for kind, color in (("all", "C0"), ("warm", "C1"), ("cold", "C2")):
            left.plot(boosts, [r[split][kind] for r in results.values()], style, color=color, marker="o",
                      label=f"{split} {kind}")
        right.plot(boosts, [r[split]["cold"] / r[split]["warm"] for r in results.values()], style, color="C3",
                   marker="o", label=split)
    left.set(xlabel="unseen_item_boost", ylabel="NDCG@10", title="users by their target item")
    right.set(xlabel="unseen_item_boost", ylabel="cold / warm NDCG@10", title="cold items against warm ones")
    left.legend(fontsize=7)
    right.legend(fontsize=8)
    return _save(plt, fig, out)
