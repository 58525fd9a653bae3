"""Export size and load time of a checkpoint: export, folder size by file, loading for serving, first request.

    python scripts/bench_export.py --checkpoint runs/ml1m_minilm --out /tmp/bench_export --repeats 3

Loading is ``Recommender.load`` (checks every file's sha256, reads the index and vectors, rebuilds the towers from
the base model and the saved weights), timed in a fresh process each repeat, as a server start would be.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from recsys_tt.cli import log_to_console, run

_LOAD = """
import sys, time
started = time.perf_counter()
from recsys_tt.serving.recommender import Recommender
from recsys_tt.serving.requests import RecommendRequest
recommender = Recommender.load(sys.argv[1])
loaded = time.perf_counter()
recommender.recommend(RecommendRequest(user_id=str(recommender.export.users["user_id"].iloc[0]), k=10))
print(loaded - started, time.perf_counter() - loaded)
"""


def _sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def main(checkpoint: str, out: str = "/tmp/recsys_tt_bench_export", repeats: int = 3) -> None:
    """Export a checkpoint, then time loading the export for serving.

    Args:
        checkpoint: a checkpoint file or run folder.
        out: where the export is written (replaced).
        repeats: fresh-process loads to time.
    """
    from recsys_tt.training.export import export_model

    if repeats <= 0:
        raise ValueError(f"repeats must be positive, got {repeats}.")
    log_to_console()
    folder = Path(out)
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    export_model(checkpoint, folder)
    exported = time.perf_counter() - started
    loads, firsts = [], []
    for _ in tqdm(range(repeats), desc="timed loads", unit="load"):
        line = subprocess.run([sys.executable, "-c", _LOAD, str(folder)], check=True, capture_output=True,
                              text=True).stdout.split()
        loads.append(float(line[0]))
        firsts.append(float(line[1]))
    sizes = _sizes(folder)
    weights = {name: size for name, size in sizes.items() if not name.endswith((".npy", ".faiss", ".parquet"))}
    print("| file | bytes |\n|---|---|")
    for name, size in sizes.items():
        print(f"| {name} | {size:,} |")
    print(f"\nexport {exported:.1f} s; folder {sum(sizes.values()) / 2**20:.2f} MiB, of which weights and metadata "
          f"{sum(weights.values()) / 2**20:.2f} MiB; load for serving {statistics.median(loads):.2f} s (median of "
          f"{repeats}, fresh processes), first request {statistics.median(firsts) * 1000:.0f} ms")
    print(json.dumps({"export_s": exported, "bytes": sum(sizes.values()), "load_s": loads, "first_request_s": firsts}))


if __name__ == "__main__":
    run(main)
