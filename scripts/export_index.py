"""Export a trained checkpoint to a folder that scoring and serving need nothing else for.

    python scripts/export_index.py --checkpoint runs/ml100k_minilm --out exports/ml100k   # newest run's best
    python scripts/export_index.py --checkpoint CKPT --out DIR --factory "IVF64,PQ16" --search_params "nprobe=8"
"""

from __future__ import annotations

import json

from recsys_tt.cli import log_to_console, run
from recsys_tt.training.export import export_model


def main(checkpoint: str, out: str, factory: str = "Flat", search_params: str = "", report_users: int = 500,
         overwrite: bool = False, device: str = "auto", data: dict[str, str] | None = None) -> None:
    """Encode the catalog with a checkpoint's towers and write index, vectors, id maps, weights and meta.json.

    Args:
        checkpoint: a train.py checkpoint file (e.g. .../checkpoints/last.ckpt), or a run folder
            (runs/<name>/version_N) or runs/<name> (its newest version), whose best-validation checkpoint is taken.
        out: export folder to create (written atomically).
        factory: FAISS index-factory string: Flat, HNSW32, IVF1024,Flat, IVF1024,PQ32, ...
        search_params: FAISS search parameters stored with the index, e.g. "nprobe=16" or "efSearch=64".
        report_users: users whose top-10 from the index is compared with exact search in meta.json.
        overwrite: replace an existing folder (only once the new one is complete).
        device: where the towers encode the catalog: "auto" (a GPU when there is one), "cpu", "cuda:1", ...
        data: data files to read instead of those the checkpoint names, e.g. '{"folder": "/data/amazon-games"}'
            (interactions, items, users, folder, source, cache_dir). The checkpoint's are logged; its cache folder is
            never written: the token cache goes to cache_dir, else ~/.cache/recsys_tt ($RECSYS_TT_CACHE).
    """
    log_to_console()
    folder = export_model(checkpoint, out, factory, search_params, report_users, overwrite, device, data)
    meta = json.loads((folder / "meta.json").read_text())
    print(json.dumps({"export": str(folder), "items": meta["num_items"], "dim": meta["dim"], "factory": factory,
                      "build_seconds": meta["build_seconds"], "ann_recall_at_10": meta["ann_recall_at_10"]["value"]}))


if __name__ == "__main__":
    run(main)
