"""Rendering items and users as text, and tokenising it.

Templates are Python format strings over table columns, e.g. ``"{title} ({year}). Genres: {genres}."``.
A missing value renders as an empty string; a column the table does not have is an error.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from recsys_tt.data.tables import DataError


@dataclass
class TextTemplates:
    """How items and users become text."""

    item: str = "{title} ({year}). Genres: {genres}."
    """Item text, from the items table's columns."""
    profile: str = "A {age} year old {gender} {occupation}."
    """User profile text, from the users table's columns (unused when there is no users table)."""
    history_item: str = "{title}"
    """How one past item is named inside user text."""
    history_prefix: str = " Recently watched: "
    """Joins the profile and the recent items in user text."""
    recent_items: int = 10
    """How many recent items user text names, most recent first (the token budget may cut it shorter)."""

    def __post_init__(self) -> None:
        if self.recent_items < 0:
            raise ValueError(f"recent_items must be >= 0, got {self.recent_items}.")


def template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def render(template: str, row: Mapping) -> str:
    values = {k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v for k, v in row.items()}
    return template.format_map(values).strip()


def render_table(template: str, frame: pd.DataFrame, what: str) -> list[str]:
    """Renders every row; refuses templates naming absent columns and rows that render to no words."""
    missing = [f for f in template_fields(template) if f not in frame.columns]
    if missing:
        raise DataError(f"{what} template {template!r} uses column(s) {missing} that the {what} table lacks; "
                        f"its columns are {list(frame.columns)}.")
    texts = [render(template, row) for row in frame.to_dict("records")]
    for i, text in enumerate(texts):
        if not re.search(r"\w", text):
            ident = frame.index[i] if frame.index.name else frame.iloc[i].get("item_id", i)
            raise DataError(f"{what} {ident!r} renders to empty text with template {template!r}; fill its fields.")
    return texts


def user_text(profile: str, recent: Sequence[str], templates: TextTemplates) -> str:
    """Profile followed by the most recent items, newest first (``recent`` is given oldest first)."""
    names = list(reversed(recent[-templates.recent_items:])) if templates.recent_items else []
    if not names:
        return profile
    return (profile + templates.history_prefix + "; ".join(names)).strip()


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Pads to the longest text in the call, not to ``max_length`` (dynamic padding)."""
    out = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


def tokenize_table(tokenizer, texts: Sequence[str], max_length: int,
                   cache_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Tokenises a whole table once with ``datasets.map`` and returns (N, L) tensors padded to its longest row.

    With ``cache_dir`` the tokens are kept in an Arrow file named by a hash of the tokenizer, length and texts,
    so a later run on the same catalog reads them instead of tokenising again.
    """
    import datasets

    texts = list(texts)
    table = datasets.Dataset.from_dict({"text": texts})
    cache_file = None
    if cache_dir is not None:
        key = json.dumps([tokenizer.name_or_path, len(tokenizer), max_length, texts]).encode()
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        cache_file = str(Path(cache_dir) / f"tokens-{hashlib.sha256(key).hexdigest()[:32]}.arrow")
    table = table.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True,
                      remove_columns=["text"], cache_file_name=cache_file, load_from_cache_file=cache_file is not None)
    ids = [torch.tensor(x) for x in table["input_ids"]]
    pad = tokenizer.pad_token_id
    input_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(x) for x in ids], batch_first=True)
    return {"input_ids": input_ids, "attention_mask": mask}


def trim(tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drops padding columns that no row in this selection uses."""
    length = int(tokens["attention_mask"].sum(1).max().item()) if len(tokens["attention_mask"]) else 1
    return {k: v[:, :max(length, 1)] for k, v in tokens.items()}
