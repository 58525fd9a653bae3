"""Training speed of configs on their own data: seconds per step, targets/s and peak RSS, one process per run.

    python scripts/bench_configs.py                # ML-100K default; ML-1M with that config; ML-1M's own config
    python scripts/bench_configs.py --steps 50 --runs '{"b32": ["configs/ml1m_minilm.yaml", "--data.batch_size", "32"]}'

Each run is `train.py fit` with the given arguments, no validation or test, for ``warmup + steps`` steps, the last
``steps`` of them timed by ``recsys_tt.training.step_timer.StepTimer``: catalog refreshes and the EMA callback count at
the rate their config sets, so time enough steps to include refreshes (ML-100K refreshes every 20 steps, ML-1M's
config every 50).
"""

from __future__ import annotations

import tempfile

from tqdm.auto import tqdm

from recsys_tt.cli import run
from recsys_tt.training.step_timer import in_own_process, timed_fit

DEFAULT_RUNS = {
    "ML-100K, ml100k_minilm.yaml": ["configs/ml100k_minilm.yaml"],
    "ML-1M, ml100k_minilm.yaml": ["configs/ml100k_minilm.yaml", "--data.dataset", "ml-1m"],
    "ML-1M, ml1m_minilm.yaml": ["configs/ml1m_minilm.yaml"],
}


def main(runs: dict[str, list[str]] | None = None, steps: int = 100, warmup: int = 5) -> None:
    """Times each run in its own process and prints a table.

    Args:
        runs: row name -> train.py arguments after `fit --config` (a config path, then overrides).
        steps: timed steps per run.
        warmup: untimed steps first (the first catalog encoding falls here).
    """
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name, args in tqdm((runs or DEFAULT_RUNS).items(), desc="configs", unit="run"):
            report = in_own_process(timed_fit, args, steps, warmup, root)
            if "error" in report:
                raise RuntimeError(f"Run {name!r} {report['error']}; its error is printed above.")
            rows.append((name, report))
    print(f"\n{'run':<36} {'s/step':>7} {'targets/s':>10} {'peak RSS GB':>12}")
    for name, report in rows:
        print(f"{name:<36} {1 / report['steps_per_s']:>7.2f} {report['targets_per_s']:>10.0f} "
              f"{report['peak_rss_gb']:>12.2f}")


if __name__ == "__main__":
    run(main)
