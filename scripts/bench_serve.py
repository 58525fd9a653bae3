"""Serving latency and throughput: the HTTP /recommend endpoint under concurrent loopback load.

    python scripts/bench_serve.py --export exports/ml100k                       # 100k items, HNSW32
    python scripts/bench_serve.py --export exports/ml100k --items 0 --factory Flat   # the export's own catalog

The export's real towers encode the users; its catalog is grown to ``--items`` by adding jittered copies of its
item vectors (so scores look like real ones) under a fresh index. Each phase sends at most ``--requests``
requests or runs ``--seconds``, whichever ends first, from ``--concurrency`` client threads on the same
machine: uncached known users (first request each), cached known users, and new users by text (always encoded).
The full path runs: user vector -> FAISS top-N -> exact rescoring -> MMR -> exploration with propensities -> one
line in a propensity log (in a temporary folder; the count of its lines is checked against the requests answered).
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import uvicorn
from tqdm.auto import tqdm

from recsys_tt.cli import run
from recsys_tt.data.propensity_log import PropensityLog, read_impressions
from recsys_tt.export.folder import ExportFolder
from recsys_tt.export.index import build_index
from recsys_tt.serving.http_api import create_app
from recsys_tt.serving.recommender import Recommender
from recsys_tt.serving.requests import ServingConfig


def grow_catalog(export: ExportFolder, items: int, factory: str, search_params: str, seed: int = 0) -> ExportFolder:
    """The export with ``items`` items: the real ones plus jittered copies of their vectors, re-indexed."""
    extra = items - len(export.vectors)
    if extra <= 0:
        return export
    rng = np.random.default_rng(seed)
    source = rng.integers(0, len(export.vectors), extra)
    copies = export.vectors[source] + rng.normal(scale=0.05, size=(extra, export.vectors.shape[1]))
    vectors = np.concatenate([export.vectors, copies / np.linalg.norm(copies, axis=1, keepdims=True)])
    vectors = vectors.astype(np.float32)
    names = export.items["history_name"].to_numpy()[source]
    added = pd.DataFrame({"item_id": [f"synthetic-{i}" for i in range(extra)], "text": [f"{n} (copy)" for n in names],
                          "history_name": names, "train_count": 0})
    index, _ = build_index(vectors, factory, search_params)
    meta = export.meta | {"num_items": items, "factory": factory, "search_params": search_params}
    # replace() keeps the export's towers, which do not depend on the catalog
    return dataclasses.replace(export, meta=meta, items=pd.concat([export.items, added], ignore_index=True),
                               text_vectors=np.concatenate([export.text_vectors, vectors[len(export.vectors):]]),
                               vectors=vectors, index=index)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(url: str, payloads, requests: int, seconds: float, concurrency: int) -> dict:
    """Sends payloads from ``concurrency`` threads until ``requests`` are done or ``seconds`` pass."""
    source, lock, latencies, errors, sent = iter(payloads), threading.Lock(), [], [0], [0]
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        with httpx.Client(timeout=30) as client:
            while time.perf_counter() < deadline:
                with lock:
                    payload = next(source, None) if sent[0] < requests else None
                    sent[0] += 1
                if payload is None:
                    return
                started = time.perf_counter()
                status = client.post(f"{url}/recommend", json=payload).status_code
                with lock:
                    if status == 200:
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors[0] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {"requests": len(ms), "errors": errors[0], "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None, "req_per_s": len(ms) / wall}


def main(export: str = "exports/ml100k", items: int = 100_000, factory: str = "HNSW32",
         search_params: str = "efSearch=256", k: int = 10, concurrency: int = 4, requests: int = 400,
         seconds: float = 60.0) -> None:
    """Measure p50/p99 latency and requests/s of POST /recommend.

    Args:
        export: an export folder (scripts/export_index.py).
        items: catalog size to serve (0 = the export's own).
        factory: FAISS index of the grown catalog.
        search_params: FAISS search parameters of that index.
        k: slate size.
        concurrency: client threads.
        requests: most requests per phase.
        seconds: longest time per phase.
    """
    base = ExportFolder.load(export)
    served = grow_catalog(base, items, factory, search_params)
    log_dir = Path(tempfile.mkdtemp(prefix="bench_serve_log_"))
    recommender = Recommender(served, ServingConfig(), log=PropensityLog(log_dir))
    users = served.users["user_id"].astype(str).tolist()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(recommender), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    rng = np.random.default_rng(0)
    order = rng.permutation(users)
    profiles = [f"A {a} year old {o} who likes {g} films." for a, o, g in
                itertools.product(range(18, 70), ("writer", "nurse", "student", "engineer"), ("funny", "dark", "old"))]
    phases = {
        "known users, uncached": [{"user_id": u, "k": k} for u in order],
        "known users, cached": ({"user_id": u, "k": k} for u in itertools.cycle(order[:200])),
        "new users by text (encoded)": [{"text": p, "k": k} for p in rng.permutation(profiles)],
    }
    warm = _load(url, ({"user_id": u, "k": k} for u in itertools.cycle(order[:200])), 200, seconds, concurrency)
    rows = []
    for name, payloads in tqdm(phases.items(), desc="load phases", unit="phase"):
        if name == "known users, uncached":
            recommender.cache = type(recommender.cache)(recommender.config.cache_size)
        rows.append({"phase": name} | _load(url, payloads, requests, seconds, concurrency))
    server.should_exit = True
    thread.join()
    recommender.log.close()
    logged, answered = len(read_impressions(log_dir)), warm["requests"] + sum(row["requests"] for row in rows)
    shutil.rmtree(log_dir)
    print(f"catalog {len(served.vectors):,} items, {factory} ({search_params}), k={k}, concurrency {concurrency}, "
          f"candidates {recommender.config.candidates}, exploration {recommender.config.exploration}")
    print(f"{'phase':<30} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7}")
    for row in rows:
        print(f"{row['phase']:<30} {row['requests']:>8} {row['errors']:>6} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} "
              f"{row['req_per_s']:>7.1f}")
    print(f"propensity log: {logged} impressions for {answered} answered requests (warm-up included)")


if __name__ == "__main__":
    run(main)
