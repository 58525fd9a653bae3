from __future__ import annotations

import pandas as pd
import pytest

from recsys_tt.data import DataError
from recsys_tt.text import TextTemplates, render_table, tokenize_table, trim, user_text


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
    from recsys_tt.towers import load_tokenizer

    tokens = tokenize_table(load_tokenizer(tiny_bert), ["a", "a much much longer title here"], max_length=6)
    assert tokens["input_ids"].shape == (2, 6)  # cut to the budget
    assert tokens["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]
    short = trim({k: v[:1] for k, v in tokens.items()})
    assert short["input_ids"].shape == (1, 3)
