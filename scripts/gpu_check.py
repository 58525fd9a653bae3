"""GPU check: bf16 training speed and memory of the GPU config, then export, scoring and evaluation on the GPU.

    python scripts/gpu_check.py                                # a Qwen2.5-0.5B-shaped decoder with random weights
    python scripts/gpu_check.py --backbone Qwen/Qwen2.5-0.5B   # a real model (HF cache or a local folder)

With no backbone it builds a decoder of Qwen2.5-0.5B's shape (24 layers, width 896, grouped-query attention) with
random weights and the given tokenizer, so it runs on a machine that cannot download; speed and memory are those
of the real shape (apart from the smaller vocabulary), the metrics mean nothing. Steps run through train.py with
configs/ml100k_qwen_gpu.yaml (DDP) or --config configs/ml100k_qwen_fsdp.yaml on one device, with the config's
strategy, so the check covers what users launch. The export uses GPU FAISS
when faiss-gpu is installed. A few minutes on one GPU; prints a table and writes gpu_check.json under --out.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # train.py sits at the repository root

import train  # noqa: E402
from recsys_tt.backbone import load_tokenizer  # noqa: E402
from recsys_tt.cli import run  # noqa: E402
from recsys_tt.export import export_model  # noqa: E402
from recsys_tt.scoring import evaluate_recommendations, score_users  # noqa: E402
from recsys_tt.step_timer import StepTimer  # noqa: E402


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


def _train(args: list[str], accelerator: str, steps: int, warmup: int, out: Path) -> tuple[dict, Path]:
    """Runs ``warmup + steps`` steps of train.py fit, times them, then the full test; returns (numbers, ckpt)."""
    timer = json.dumps({"class_path": "recsys_tt.step_timer.StepTimer", "init_args": {"warmup": warmup}})
    cli = train.main(["fit", *args, "--test_after_fit", "false",
                      "--trainer.accelerator", accelerator, "--trainer.devices", "1",
                      "--trainer.max_steps", str(warmup + steps), "--trainer.limit_val_batches", "0",
                      "--trainer.logger.init_args.save_dir", str(out), f"--trainer.callbacks+={timer}"])
    numbers = next(c for c in cli.trainer.callbacks if isinstance(c, StepTimer)).report()
    started = time.perf_counter()
    tested = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    numbers |= {"test_seconds": time.perf_counter() - started, "test_ndcg@10": tested["test/ndcg@10"],
                "precision": str(cli.trainer.precision), "batch_windows": cli.datamodule.hparams.batch_size,
                "history_len": cli.datamodule.hparams.history_len,
                "gradient_checkpointing": cli.model.model.config.gradient_checkpointing}
    checkpoint = out / "gpu_check.ckpt"
    cli.trainer.save_checkpoint(checkpoint)
    return numbers, checkpoint


def main(backbone: str | None = None, tokenizer: str = "minilm", layers: int = 24, width: int = 896,
         steps: int = 40, warmup: int = 5, config: str = "configs/ml100k_qwen_gpu.yaml",
         batch_size: int | None = None, gradient_checkpointing: bool | None = None, factory: str = "Flat",
         export: bool = True, profiler: str | None = None, accelerator: str = "gpu",
         out: str = "runs/gpu_check") -> None:
    """Time bf16 training steps of the GPU config, then export, score and evaluate with the result.

    Args:
        backbone: model name or folder; None builds a random-weight decoder of ``layers`` x ``width``.
        tokenizer: tokenizer of the random-weight decoder.
        layers: layers of the random-weight decoder (24 = Qwen2.5-0.5B).
        width: hidden size of the random-weight decoder (896 = Qwen2.5-0.5B).
        steps: timed training steps.
        warmup: untimed steps first (compilation of kernels, allocator growth).
        config: the training config to run (its trainer settings, reduced to one device).
        batch_size: overrides the config's training windows per step.
        gradient_checkpointing: overrides the config's gradient checkpointing.
        factory: FAISS index of the export (Flat and IVF have GPU versions; HNSW builds on the CPU). With Flat the
            offline metrics must equal the test metrics of training.
        export: export, score and evaluate after training.
        profiler: a Lightning profiler ("simple", "advanced", "pytorch") whose report fit prints.
        accelerator: "gpu"; "cpu" rehearses the script on a machine without one.
        out: folder for the run, the export, the recommendations and gpu_check.json.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    report = {"environment": _environment(accelerator)}
    print(json.dumps(report["environment"]), flush=True)
    if backbone is None:
        backbone = random_decoder(root / "backbone", tokenizer, layers, width)
        report["backbone"] = f"random Qwen2 decoder, {layers} layers x {width}"
    else:
        report["backbone"] = backbone
    args = ["--config", config, "--model.tower.backbone", backbone]
    if batch_size is not None:
        args += ["--data.batch_size", str(batch_size)]
    if gradient_checkpointing is not None:
        args += ["--model.tower.gradient_checkpointing", str(gradient_checkpointing).lower()]
    if profiler is not None:
        args += ["--trainer.profiler", profiler]
    report["train"], checkpoint = _train(args, accelerator, steps, warmup, root)
    if export:
        report["export_score"] = _export_score(checkpoint, factory, accelerator, root)
    if torch.distributed.is_initialized():  # the DDP config's one-process group; free its port for later jobs
        torch.distributed.destroy_process_group()
    (root / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(f"\n{'measure':<28} value")
    for section in ("train", "export_score"):
        for name, value in report.get(section, {}).items():
            print(f"{name:<28} {value:.4g}" if isinstance(value, float) else f"{name:<28} {value}")


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


if __name__ == "__main__":
    run(main)
