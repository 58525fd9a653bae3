"""GPU check: training speed of the GPU configs (steps/s, targets/s, TFLOP/s, share of the chip's peak, memory),
then export, scoring and evaluation on the GPU with the first row's weights.

    python scripts/gpu_check.py                                 # every row below, random-weight decoder
    python scripts/gpu_check.py --decoder Qwen/Qwen2.5-0.5B     # the decoder rows with a real model
    python scripts/gpu_check.py --rows '["ML-1M MiniLM"]' --budget_s 120

Rows: the ML-1M MiniLM GPU config, and a Qwen2.5-0.5B-shaped decoder (configs/ml100k_qwen_gpu.yaml) under DDP on
one device with and without gradient checkpointing, and under FSDP (configs/ml100k_qwen_fsdp.yaml). With no
``--decoder`` the decoder has random weights of the real shape (24 layers, width 896, grouped-query attention) and
MiniLM's tokenizer, so it runs on a machine that cannot download; speed and memory are those of the real shape
(apart from the smaller vocabulary). Each row runs ``train.py fit`` in its own process for ``warmup + steps`` steps,
timed after the warm-up by ``recsys_tt.training.step_timer.StepTimer``; rows not started within ``budget_s``
are skipped.
Prints a table and writes gpu_check.json under --out.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from recsys_tt.cli import run
from recsys_tt.model.backbone import load_tokenizer
from recsys_tt.offline.scoring import evaluate_recommendations, score_users
from recsys_tt.training.export import export_model
from recsys_tt.training.step_timer import in_own_process, timed_fit

DECODER = "{decoder}"  # stands for the decoder's folder in ROWS
ROWS = {
    "ML-1M MiniLM": ["configs/ml1m_minilm_gpu.yaml"],
    "decoder DDP, checkpointing": ["configs/ml100k_qwen_gpu.yaml", "--model.tower.backbone", DECODER,
                                   "--model.tower.gradient_checkpointing", "true"],
    "decoder DDP, no checkpointing": ["configs/ml100k_qwen_gpu.yaml", "--model.tower.backbone", DECODER,
                                      "--model.tower.gradient_checkpointing", "false"],
    "decoder FSDP, checkpointing": ["configs/ml100k_qwen_fsdp.yaml", "--model.tower.backbone", DECODER],
}


def random_decoder(folder: Path, tokenizer: str, layers: int, width: int) -> str:
    """Saves a Qwen2-architecture decoder with random bf16 weights (Qwen2.5-0.5B's proportions) and a tokenizer."""
    from transformers import Qwen2Config, Qwen2Model

    tok = load_tokenizer(tokenizer)
    heads = max(width // 64, 1)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=width, intermediate_size=width * 11 // 2,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(heads // 7, 1),
                         max_position_embeddings=4096, tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen2Model(config).to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _environment(accelerator: str) -> dict[str, str]:
    try:
        import faiss

        faiss_kind = f"faiss {faiss.__version__} ({'GPU' if hasattr(faiss, 'StandardGpuResources') else 'CPU only'})"
    except ImportError:
        faiss_kind = "faiss missing"
    import peft
    import pytorch_lightning
    import transformers

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"device": device, "accelerator": accelerator, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "lightning": pytorch_lightning.__version__, "faiss": faiss_kind}


def main(rows: list[str] | None = None, decoder: str | None = None, tokenizer: str = "minilm", layers: int = 24,
         width: int = 896, steps: int = 30, warmup: int = 5, budget_s: float = 420.0, peak_tflops: float = 790.0,
         export: bool = True, factory: str = "Flat", accelerator: str = "gpu", overrides: list[str] | None = None,
         out: str = "runs/gpu_check") -> None:
    """Time the rows' training steps, then export, score and evaluate the first row's weights.

    Args:
        rows: names of ROWS to run, in order (None: all).
        decoder: model name or folder of the decoder rows; None builds a random-weight decoder of ``layers`` x
            ``width``.
        tokenizer: tokenizer of the random-weight decoder.
        layers: layers of the random-weight decoder (24 = Qwen2.5-0.5B).
        width: hidden size of the random-weight decoder (896 = Qwen2.5-0.5B).
        steps: timed training steps per row.
        warmup: untimed steps first (kernel selection, allocator growth); the last one's FLOPs are counted.
        budget_s: no row starts after this many seconds, and a row still running then is stopped.
        peak_tflops: the chip's dense bf16 rate that "share of peak" divides by (790: an 8192^3 bf16 matmul on an
            H200, as measured through PyTorch).
        export: export the first row's weights, score every user offline and evaluate: with Flat, the offline
            NDCG@10 must equal the test NDCG@10 of training.
        factory: FAISS index of the export (Flat and IVF have GPU versions; HNSW builds on the CPU).
        accelerator: "gpu"; "cpu" rehearses the script on a machine without one.
        overrides: train.py options added to every row, e.g. ``["--data.batch_size", "32"]``.
        out: folder for the runs, the export, the recommendations and gpu_check.json.
    """
    started, root = time.monotonic(), Path(out)
    root.mkdir(parents=True, exist_ok=True)
    report: dict = {"environment": _environment(accelerator), "rows": {}}
    print(json.dumps(report["environment"]), flush=True)
    names = rows or list(ROWS)
    unknown = [name for name in names if name not in ROWS]
    if unknown:
        raise ValueError(f"Unknown rows {unknown}; the rows are {list(ROWS)}.")
    if any(DECODER in ROWS[name] for name in names):
        decoder = decoder or random_decoder(root / "backbone", tokenizer, layers, width)
        report["decoder"] = decoder
    for index, name in enumerate(names):
        left = budget_s - (time.monotonic() - started)
        if left <= 0:
            print(f"skipped {name!r}: the {budget_s:.0f} s budget is spent", flush=True)
            continue
        args = [decoder if a == DECODER else a for a in ROWS[name]] + list(overrides or [])
        args += ["--trainer.accelerator", accelerator, "--trainer.devices", "1"]
        report["rows"][name] = in_own_process(timed_fit, args, steps, warmup, str(root / f"row{index}"),
                                              export and index == 0, timeout=left)
        print(f"{name}: {report['rows'][name]}", flush=True)
    _add_peak_share(report["rows"], peak_tflops)
    first = root / "row0" / "timed.ckpt"
    if export and first.exists():
        report["export_score"] = _export_score(first, factory, accelerator, root)
    (root / "gpu_check.json").write_text(json.dumps(report, indent=2))
    _print_table(report)


def _add_peak_share(rows: dict[str, dict], peak_tflops: float) -> None:
    for numbers in rows.values():
        if "tflop_per_s" in numbers:
            numbers["peak_share"] = numbers["tflop_per_s"] / peak_tflops


def _export_score(checkpoint: Path, factory: str, accelerator: str, root: Path) -> dict:
    started = time.perf_counter()
    folder = export_model(checkpoint, root / "export", factory, "nprobe=16" if factory.startswith("IVF") else "",
                          overwrite=True, device="cuda" if accelerator == "gpu" else "cpu")
    export_seconds = time.perf_counter() - started
    started = time.perf_counter()
    recs = root / "recs.parquet"
    score_users(folder, recs, k=100, accelerator=accelerator)
    score_seconds = time.perf_counter() - started
    offline = evaluate_recommendations(recs, folder, "test", (10,))
    meta = json.loads((folder / "meta.json").read_text())
    return {"export_seconds": export_seconds, "score_seconds": score_seconds, "offline_ndcg@10": offline["ndcg@10"],
            "ann_recall_at_10": meta["ann_recall_at_10"]["value"]}


def _print_table(report: dict) -> None:
    print(f"\n{'row':<32} {'steps/s':>8} {'targets/s':>10} {'GFLOP/tgt':>9} {'TFLOP/s':>8} {'% peak':>7} "
          f"{'GPU GB':>7} {'RSS GB':>7}")
    for name, n in report["rows"].items():
        if "error" in n:
            print(f"{name:<32} {n['error']}")
            continue
        print(f"{name:<32} {n['steps_per_s']:>8.2f} {n['targets_per_s']:>10.0f} {n.get('gflop_per_target', 0):>9.3f} "
              f"{n.get('tflop_per_s', 0):>8.2f} {100 * n.get('peak_share', 0):>7.2f} {n.get('peak_cuda_gb', 0):>7.2f} "
              f"{n['peak_rss_gb']:>7.2f}")
    for name, value in report.get("export_score", {}).items():
        print(f"{name:<28} {value:.4g}" if isinstance(value, float) else f"{name:<28} {value}")


if __name__ == "__main__":
    run(main)
