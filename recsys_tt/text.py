"""Rendering items and users as text, and tokenising it.

Templates are Python format strings over table columns, e.g. ``"{title} ({year}). Genres: {genres}."``.
A missing value renders as an empty string; a column the table does not have is an error.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from recsys_tt.data import DataError


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


def tokenize_table(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenises a whole table once with ``datasets.map`` and returns (N, L) tensors padded to its longest row."""
    import datasets

    table = datasets.Dataset.from_dict({"text": list(texts)})
    table = table.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True,
                      remove_columns=["text"])
    ids = [torch.tensor(x) for x in table["input_ids"]]
    pad = tokenizer.pad_token_id
    input_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(x) for x in ids], batch_first=True)
    return {"input_ids": input_ids, "attention_mask": mask}


def trim(tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drops padding columns that no row in this selection uses."""
    length = int(tokens["attention_mask"].sum(1).max().item()) if len(tokens["attention_mask"]) else 1
    return {k: v[:, :max(length, 1)] for k, v in tokens.items()}
