"""Training throughput and peak memory: recsys_tt vs sentence-transformers (MultipleNegativesRankingLoss).

    python scripts/bench_train.py                      # MiniLM, MovieLens-100K, batch 64, 20 timed steps
    python scripts/bench_train.py --steps 50 --batch_size 128

Both sides use the same backbone, LoRA (r=8 on query/value, dropout 0.05), bf16 autocast, in-batch negatives, user
texts (profile + 20 recent titles, 128 tokens) against item texts, and the same training examples. Each system runs
in its own process, so peak RSS is its own. Rows:
- sentence-transformers: one shared model encodes (user text, item text) pairs, MNRL with scale 1/temperature,
  the backbone's own dropout active (its default);
- sentence-transformers, base dropout off: the same with the frozen backbone's dropout off, as recsys_tt's default;
- recsys_tt text: the text user tower of recsys_tt on the same pairs (separate user/item adapters);
- recsys_tt item-vector (the default config's user tower): targets per second, each window giving many targets.
"""

from __future__ import annotations

import multiprocessing
import resource
import time

import numpy as np
import pytorch_lightning as pl
import torch
from tqdm.auto import tqdm

from recsys_tt.cli import run
from recsys_tt.training.step_timer import StepTimer

MODES = ("sentence-transformers", "sentence-transformers, base dropout off", "recsys_tt text",
         "recsys_tt item-vector")


def _data(user_input: str, batch_size: int):
    from recsys_tt.data.user_inputs import user_input_mode
    from recsys_tt.training.datamodule import RecDataModule

    data = RecDataModule(batch_size=batch_size)
    data.user_input = user_input_mode(user_input)  # a trainer's setup would take it from the model
    return data


def _time_steps(step, steps: int, warmup: int) -> float:
    for i in tqdm(range(warmup + steps), desc="steps", unit="step", leave=False):
        if i == warmup:
            started = time.perf_counter()
        step(i)
    return time.perf_counter() - started


def _sentence_transformers(batch_size: int, steps: int, warmup: int, base_dropout: bool) -> float:
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import SentenceTransformer, losses

    from recsys_tt.data.examples import training_examples
    from recsys_tt.data.text import user_text
    from recsys_tt.model.backbone import disable_dropout, resolve_backbone

    data = _data("text", batch_size)
    model = SentenceTransformer(resolve_backbone("minilm"), device="cpu")
    model.max_seq_length = 128
    if not base_dropout:  # as recsys_tt's default (TowerConfig.backbone_dropout)
        disable_dropout(model)
    model[0].auto_model = get_peft_model(model[0].auto_model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                                         target_modules=["query", "value"]))
    loss_fn = losses.MultipleNegativesRankingLoss(model, scale=20.0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    examples = training_examples(data.split.train, 1)
    order = np.random.default_rng(0).permutation(len(examples))
    features, train = data.user_features, data.split.train

    def step(i: int) -> None:
        batch = examples[order[i * batch_size: (i + 1) * batch_size]]
        users = [user_text(features.profile_texts[u], [features.history_names[j] for j in train[u][:t][-20:]],
                           data.templates) for u, t in batch]
        items = [data.item_texts[train[u][t]] for u, t in batch]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn([model.tokenize(users), model.tokenize(items)], None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return batch_size * steps / _time_steps(step, steps, warmup)


def _recsys_tt(user_input: str, batch_size: int, steps: int, warmup: int) -> float:
    from recsys_tt.model.towers import TowerConfig
    from recsys_tt.training.module import TwoTowerModule

    data = _data(user_input, batch_size)
    module = TwoTowerModule(num_items=data.num_items, tower=TowerConfig(user_input=user_input), lr=2e-3)
    timer = StepTimer(warmup)
    trainer = pl.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=warmup + steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                         enable_model_summary=False, callbacks=[timer])
    trainer.fit(module, datamodule=data)
    return timer.report()["targets_per_s"]


def _run(mode: str, batch_size: int, steps: int, warmup: int, queue) -> None:
    torch.manual_seed(0)
    if mode.startswith("sentence-transformers"):
        rate = _sentence_transformers(batch_size, steps, warmup, base_dropout=mode == MODES[0])
    else:
        rate = _recsys_tt("text" if mode == MODES[2] else "item_vectors", batch_size, steps, warmup)
    queue.put((mode, rate, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2))


def main(batch_size: int = 64, steps: int = 20, warmup: int = 3) -> None:
    """Measure training samples/s and peak RSS of each system in its own process.

    Args:
        batch_size: training examples per step (windows of up to 20 targets for the item-vector tower).
        steps: timed steps after warm-up.
        warmup: untimed steps first.
    """
    context = multiprocessing.get_context("spawn")
    rows = []
    for mode in tqdm(MODES, desc="user inputs", unit="mode"):
        queue = context.Queue()
        process = context.Process(target=_run, args=(mode, batch_size, steps, warmup, queue))
        process.start()
        rows.append(queue.get())
        process.join()
    base = rows[0][1]
    print(f"{'system':<40} {'targets/s':>10} {'vs ST':>7} {'peak RSS GB':>12}")
    for mode, rate, rss in rows:
        print(f"{mode:<40} {rate:>10.1f} {rate / base:>6.2f}x {rss:>12.2f}")


if __name__ == "__main__":
    run(main)
