"""Retrieval speed: recsys_tt's path (search + seen-item exclusion) vs raw FAISS vs NumPy brute force.

    python scripts/bench_retrieval.py                                  # 10k and 100k items, d = 384
    python scripts/bench_retrieval.py --sizes [10000,100000,1000000] --factories [Flat,IVF1024,PQ32]

Synthetic unit vectors; queries are perturbed catalog items and exclude 20 random items each. Prints one
table: single-query latency (p50/p99), batched throughput, overhead of our path over raw FAISS on the same
index (k deep; the "raw, k+20" row is raw FAISS as deep as the exclusions make our search; the "faiss IDSelector"
row is FAISS excluding on its own, one search per query since a selector serves a whole batch), and recall@10
against exact search. Random exclusions rarely reach the top k, like a user's old, far-off history; the
"recsys_tt, near" row excludes 20 of each query's exact top k + 40 instead, like a history that crowds the top
of the ranking, so results must be moved up.
"""

from __future__ import annotations

import time

import faiss
import numpy as np
from tqdm.auto import tqdm

from recsys_tt.cli import run
from recsys_tt.export.index import build_index, exact_top_k
from recsys_tt.serving.retrieval import search_excluding


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _latencies(paths: dict, queries: np.ndarray, rounds: int = 4) -> dict[str, np.ndarray]:
    """Per-query milliseconds of each path; paths take turns in blocks, in alternating order, so that drift of
    the machine and caches warmed by the previous path do not favour one of them."""
    out = {name: [] for name in paths}
    for turn in tqdm(range(rounds), desc="latency rounds", unit="round", leave=False):
        for name in list(paths)[:: 1 if turn % 2 == 0 else -1]:
            for q in queries:
                started = time.perf_counter()
                paths[name](q[None])
                out[name].append(time.perf_counter() - started)
    return {name: np.asarray(times) * 1e3 for name, times in out.items()}


def _qps(fn, queries: np.ndarray, repeats: int = 3) -> float:
    best = min(_timed(fn, queries) for _ in range(repeats))
    return len(queries) / best


def _timed(fn, queries: np.ndarray) -> float:
    started = time.perf_counter()
    fn(queries)
    return time.perf_counter() - started


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / exact.shape[1] for f, e in zip(found, exact)]))


def _faiss_excluding(index, factory: str, search_params: str, k: int, exclude: list[np.ndarray]):
    """Raw FAISS doing our job alone: each query searched with a selector that skips its excluded rows."""
    kinds = {"IVF": faiss.SearchParametersIVF, "HNSW": faiss.SearchParametersHNSW}
    kind = next((c for key, c in kinds.items() if key in factory), faiss.SearchParameters)
    setting = {name: int(value) for name, value in (p.split("=") for p in search_params.split(",") if p)}

    def search(queries: np.ndarray) -> np.ndarray:
        found = []
        for query, excluded in zip(queries, exclude):
            banned = faiss.IDSelectorBatch(excluded)  # kept alive here: IDSelectorNot only points to it
            params = kind(sel=faiss.IDSelectorNot(banned), **setting)
            found.append(index.search(query[None], k, params=params)[1][0])
        return np.stack(found)
    return search


def bench(size: int, factory: str, dim: int, k: int, single: int, batch: int, rng: np.random.Generator) -> list[dict]:
    vectors = _unit(rng.normal(size=(size, dim)))
    queries = _unit(vectors[rng.integers(0, size, batch)] + 0.5 * _unit(rng.normal(size=(batch, dim))))
    exclude = [rng.integers(0, size, 20) for _ in range(batch)]
    params = {"HNSW": "efSearch=64", "IVF": "nprobe=16"}
    search_params = next((v for key, v in params.items() if key in factory), "")
    index, build = build_index(vectors, factory, search_params)
    top = exact_top_k(queries, vectors, k + 40)
    near = [rng.choice(r, 20, replace=False) for r in top]
    exact = {name: np.stack([r[~np.isin(r, e)][:k] for r, e in zip(top, excluded)])
             for name, excluded in (("random", exclude), ("near", near))}
    alone = _faiss_excluding(index, factory, search_params, k, exclude)
    found = {"recsys_tt": search_excluding(index, queries, k, exclude)[0], "faiss IDSelector": alone(queries),
             "recsys_tt, near": search_excluding(index, queries, k, near)[0]}
    paths = {
        "recsys_tt": lambda q: search_excluding(index, q, k, exclude[: len(q)]),
        "recsys_tt, near": lambda q: search_excluding(index, q, k, near[: len(q)]),
        "raw faiss": lambda q: index.search(q, k),
        "raw, k+20": lambda q: index.search(q, k + 20),  # as deep as the exclusions make our search
        "faiss IDSelector": alone,
        "numpy exact": lambda q: exact_top_k(q, vectors, k),
    }
    if factory != "Flat":
        del paths["numpy exact"]  # one brute-force row per size is enough
    latencies = _latencies(paths, queries[:single])
    rows = []
    for name, fn in paths.items():
        lat = latencies[name]
        rows.append({"items": size, "index": factory, "path": name, "build_s": build, "p50_ms": np.percentile(lat, 50),
                     "p99_ms": np.percentile(lat, 99), "batch_qps": _qps(fn, queries),
                     "recall@10": _recall(found[name], exact["near" if "near" in name else "random"])
                     if name in found else float("nan")})
    return rows


def main(sizes: list[int] | None = None, factories: list[str] | None = None, dim: int = 384, k: int = 10,
         single: int = 500, batch: int = 1000, seed: int = 0) -> None:
    """Benchmark retrieval paths over synthetic catalogs.

    Args:
        sizes: catalog sizes (default 10k and 100k; 1M works but HNSW takes long to build on 2 cores).
        factories: FAISS index-factory strings (default Flat, HNSW32, IVF-PQ sized to the catalog).
        dim: vector dimension.
        k: results per query.
        single: queries timed one at a time (latency), four times per path.
        batch: queries per batched call (throughput).
        seed: random seed.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes or [10_000, 100_000]:
        nlist = int(4 * np.sqrt(size))
        for factory in factories or ["Flat", "HNSW32", f"IVF{nlist},PQ32"]:
            rows.extend(bench(size, factory, dim, k, single, batch, rng))
            print(f"done: {size} items, {factory}", flush=True)
    raw = {(r["items"], r["index"]): r for r in rows if r["path"] == "raw faiss"}
    header = f"{'items':>8} {'index':<16} {'path':<17} {'build s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batch q/s':>10} " \
             f"{'p50 +%':>7} {'q/s -%':>7} {'recall@10':>9}"
    print(header)
    for r in rows:
        base = raw[(r["items"], r["index"])]
        slower = 100 * (r["p50_ms"] / base["p50_ms"] - 1)
        fewer = 100 * (1 - r["batch_qps"] / base["batch_qps"])
        print(f"{r['items']:>8} {r['index']:<16} {r['path']:<17} {r['build_s']:>8.2f} {r['p50_ms']:>8.3f} "
              f"{r['p99_ms']:>8.3f} {r['batch_qps']:>10.0f} {slower:>7.1f} {fewer:>7.1f} {r['recall@10']:>9.3f}")


if __name__ == "__main__":
    run(main)
