from __future__ import annotations

import pandas as pd
import pytest
import torch

from recsys_tt.data.tables import DataError
from recsys_tt.data.text import TextTemplates, render_table, tokenize_table, trim, user_text
from recsys_tt.model.backbone import load_tokenizer


def test_item_template_renders_fields_and_blank_missing_values():
    items = pd.DataFrame({"item_id": ["1", "2"], "title": ["Toy Story", "Heat"], "year": ["1995", None]})
    assert render_table("{title} ({year})", items, "item") == ["Toy Story (1995)", "Heat ()"]


def test_template_with_absent_column_is_refused():
    items = pd.DataFrame({"item_id": ["1"], "title": ["Toy Story"]})
    with pytest.raises(DataError, match=r"\['genres'\]"):
        render_table("{title}: {genres}", items, "item")


def test_empty_text_is_refused_with_the_item_id():
    items = pd.DataFrame({"item_id": ["1", "2"], "title": ["Toy Story", ""]})
    with pytest.raises(DataError, match="'2' renders to empty text"):
        render_table("{title}.", items, "item")


def test_user_text_lists_most_recent_first_and_caps_the_count():
    templates = TextTemplates(recent_items=2, history_prefix=" Recent: ")
    assert user_text("A writer.", ["old", "mid", "new"], templates) == "A writer. Recent: new; mid"
    assert user_text("A writer.", [], templates) == "A writer."


def test_negative_recent_items_is_refused():
    with pytest.raises(ValueError, match="recent_items"):
        TextTemplates(recent_items=-1)


def test_table_tokens_are_right_padded_and_trim_drops_unused_columns(tiny_bert):
    tokens = tokenize_table(load_tokenizer(tiny_bert), ["a", "a much much longer title here"], max_length=6)
    assert tokens["input_ids"].shape == (2, 6)  # cut to the budget
    assert tokens["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]
    short = trim({k: v[:1] for k, v in tokens.items()})
    assert short["input_ids"].shape == (1, 3)


def test_tokenised_tables_are_cached_on_disk_by_content(tiny_bert, tmp_path):
    class Counting:
        """The tiny BERT's tokenizer, counting how often it is called."""

        def __init__(self, tokenizer) -> None:
            self.tokenizer, self.calls = tokenizer, 0
            self.name_or_path, self.pad_token_id = tokenizer.name_or_path, tokenizer.pad_token_id

        def __len__(self) -> int:
            return len(self.tokenizer)

        def __call__(self, *args, **kwargs):
            self.calls += 1
            return self.tokenizer(*args, **kwargs)

    tokenizer = Counting(load_tokenizer(tiny_bert))
    texts = ["first movie", "a second, longer movie title"]
    first = tokenize_table(tokenizer, texts, 8, cache_dir=tmp_path)
    calls = tokenizer.calls
    again = tokenize_table(tokenizer, texts, 8, cache_dir=tmp_path)
    assert calls > 0 and tokenizer.calls == calls  # read from the cache, not tokenised again
    assert all(torch.equal(first[k], again[k]) for k in first)
    tokenize_table(tokenizer, texts, 6, cache_dir=tmp_path)  # another length: another file
    assert len(list(tmp_path.glob("tokens-*.arrow"))) == 2 and tokenizer.calls > calls
