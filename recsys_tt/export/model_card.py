"""The model card of an export folder (its README.md, as on the Hugging Face hub), rendered from meta.json."""

from __future__ import annotations

import json
from pathlib import Path

_GROUPLENS = ("GroupLens's MovieLens licence: research use, no redistribution without permission, cite Harper and "
              "Konstan (2015)")
DATASETS = {
    "ml-100k": ("MovieLens 100K", _GROUPLENS),
    "ml-1m": ("MovieLens 1M", _GROUPLENS),
    "amazon-beauty": ("Amazon Beauty (2014, 5-core; McAuley et al.)", "research use only, not to be redistributed"),
    "amazon-games": ("Amazon Video Games (2018, 5-core; Ni, Li and McAuley 2019)",
                     "research use only, not to be redistributed"),
}
"""Named data sets: what they are and the terms their authors give them."""
BACKBONE_LICENCES = {"sentence-transformers/all-MiniLM-L6-v2": "Apache-2.0"}


def _data_line(data: dict) -> str:
    if data.get("dataset") == "files":
        files = (f"{name} `{data.get(name)}`" for name in ("interactions", "items", "users") if data.get(name))
        line = "the files " + ", ".join(files)
    else:
        name = DATASETS.get(data.get("dataset"), (f"`{data.get('dataset')}`", ""))[0]
        line = f"{name} ({data.get('catalog', 'rated')} items)"
    return line + (f", the interactions before {data['before']}" if data.get("before") else "")


def _validation_use(data: dict) -> str:
    if data.get("train_on_validation"):
        return ", also trained on as a final fit with settings chosen on validation"
    return ", held out of training"


def _terms(tower: dict, data: dict) -> str:
    licence = BACKBONE_LICENCES.get(tower["backbone"], "see its own model card")
    terms = DATASETS.get(data.get("dataset"), (None, "those of whoever owns the files it was trained on"))[1]
    return f"""The towers adapt **{tower["backbone"]}** (licence: {licence}); the adapters and weights here are derived
from it. The training data's terms: {terms}. Those terms bind what was trained on the data as far as they reach:
read them before sharing this folder. Intended use: recommendation and retrieval within the data's terms, and
research. The model reproduces the patterns of the interactions it learnt from (what was popular, who is
represented), has not been evaluated for fairness, and is not meant for decisions about people."""


def _metrics_table(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return "No test metrics were found beside the checkpoint (its run's `metrics.csv`)."
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in sorted(metrics.items()))
    return "| metric | value |\n|---|---|\n" + rows


def model_card(meta: dict) -> str:
    """Markdown: base model, data and split, test metrics, export settings, ANN recall, loading, the configs."""
    tower, data = meta["model_hparams"]["tower"], meta["data_hparams"]
    adapters = ", ".join(f"`adapters/{name}`" for name in meta["adapters"])
    recall = meta["ann_recall_at_10"]
    ids = " plus a trained id vector for items seen in training" if tower["item_id_embeddings"] else ""
    return f"""---
library_name: peft
base_model: {tower["backbone"]}
tags: [recsys_tt, two-tower, recommendation, lora]
---

# recsys_tt two-tower recommender, model {meta["model_version"]}

Two LoRA-adapted towers over **{tower["backbone"]}** (users: `{tower["user_input"]}`, pooling
`{tower.get("user_pooling") or tower["pooling"]}`; items: `{tower["pooling"]}` pooling{ids}), trained by recsys_tt
and exported with {meta["num_items"]} item vectors ({meta["dim"]}-d, L2-normalised, inner product) for
{meta["num_users"]} users.

## Data and evaluation

Trained on {_data_line(data)}. Split: leave-one-out by time per user (last interaction test, second to last
validation{_validation_use(data)}); metrics rank the whole catalog with each user's history excluded, on the checkpoint
`{_run_relative(meta["source_checkpoint"])}` (sha256 `{meta["checkpoint_sha256"][:16]}`).

{_metrics_table(meta.get("test_metrics"))}

## Export

FAISS `{meta["factory"]}` (`{meta["search_params"] or "default search parameters"}`), built in
{meta["build_seconds"]} s; recall@10 against exact search {recall["value"]:.4f} on {recall["users"]} users. Encoded
in {meta["precision"]}. Every file but this card and meta.json is checked against the sha256 in meta.json on load.

## Licence and intended use

{_terms(tower, data)}

## Loading

```python
from recsys_tt.serving.recommender import Recommender
from recsys_tt.serving.requests import RecommendRequest
rec = Recommender.load("path/to/this/folder")
rec.recommend(RecommendRequest(user_id="<a user id>", k=10))
```

Or without recsys_tt's serving: each tower's adapter ({adapters}) is a peft folder,
`PeftModel.from_pretrained(AutoModel.from_pretrained(base), "adapters/item")`, where `base` is `{tower["backbone"]}`
from the hub or, offline, a local copy of it (`recsys_tt.model.backbone.resolve_backbone("{tower["backbone"]}")`
names the installed one); mean pooling and L2 normalisation give the item text vectors. The other trained weights
(heads, id vectors, temperature) are in `towers.safetensors`.

## Training configuration

```json
{json.dumps({"model": meta["model_hparams"], "data": data}, indent=2)}
```
"""


def _run_relative(checkpoint: str) -> str:
    """``NAME/version_N/checkpoints/FILE`` of a train.py checkpoint: where it sits in its runs folder, without this
    machine's absolute path."""
    return "/".join(Path(checkpoint).parts[-4:])
