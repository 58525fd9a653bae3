"""Amazon Beauty from the shared data folder: pinned files, canonical tables, refusals that say what to do."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from recsys_tt.data.amazon import UNTITLED, amazon_games, ensure_amazon_beauty
from recsys_tt.data.tables import DataError, LeaveOneOut, load_interaction_data

BEAUTY = Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon-beauty"
needs_beauty = pytest.mark.skipif(not BEAUTY.is_dir(), reason=f"{BEAUTY} is not on this machine")


@needs_beauty
def test_beauty_converts_to_the_published_counts_in_review_order(tmp_path):
    folder = ensure_amazon_beauty(BEAUTY, tmp_path)
    data = load_interaction_data(folder / "interactions.csv", folder / "items.csv")
    assert (data.num_users, data.num_items, sum(map(len, data.sequences))) == (22363, 12101, 198502)
    first = (BEAUTY / "user_sequence.txt").read_text().splitlines()[0].split()
    user = data.user_ids.index(first[0])
    assert data.items["item_id"].to_numpy()[data.sequences[user]].tolist() == first[1:]  # the file's order
    assert (data.items["title"] == UNTITLED).sum() == 7
    split = LeaveOneOut.split(data.sequences)
    assert (split.test >= 0).all() and (split.valid >= 0).all()  # 5-core: every user validates and tests
    assert ensure_amazon_beauty(BEAUTY, tmp_path) == folder  # converted once, then verified and reused


@needs_beauty
def test_a_changed_or_missing_beauty_file_is_refused_with_what_to_do(tmp_path):
    copy = tmp_path / "beauty"
    shutil.copytree(BEAUTY, copy)
    with open(copy / "products_lookup.csv", "a") as handle:
        handle.write("99999,An extra product\n")
    with pytest.raises(DataError, match="products_lookup.csv is not the pinned Amazon Beauty build"):
        ensure_amazon_beauty(copy, tmp_path / "cache")
    (copy / "user_sequence.txt").unlink()
    with pytest.raises(DataError, match="user_sequence.txt is missing; data.folder must hold"):
        ensure_amazon_beauty(copy, tmp_path / "cache")
    assert not (tmp_path / "cache" / "amazon-beauty").exists()  # nothing half-written


def test_beauty_without_a_folder_says_where_to_point_it(tmp_path):
    with pytest.raises(DataError, match="needs data.folder"):
        ensure_amazon_beauty(None, tmp_path)


GAMES = BEAUTY.parent / "amazon-games"
needs_games = pytest.mark.skipif(not GAMES.is_dir(), reason=f"{GAMES} is not on this machine")


@needs_games
def test_games_before_the_cut_is_the_world_as_it_was_then():
    folder = amazon_games(GAMES)
    data = load_interaction_data(folder / "interactions.csv", folder / "items.csv", catalog="rated",
                                 before="2016-05-14")
    assert (data.num_users, data.num_items, sum(map(len, data.sequences))) == (45873, 16149, 362768)
    everything = load_interaction_data(folder / "interactions.csv", folder / "items.csv", catalog="rated")
    assert (everything.num_users, everything.num_items) == (50597, 16874)
    with pytest.raises(DataError, match="no interaction is before 1990-01-01"):
        load_interaction_data(folder / "interactions.csv", folder / "items.csv", before="1990-01-01")
    with pytest.raises(DataError, match="'May 2016x' is not a date"):
        load_interaction_data(folder / "interactions.csv", folder / "items.csv", before="May 2016x")


@needs_games
def test_a_changed_games_file_is_refused_naming_it(tmp_path):
    copy = tmp_path / "games"
    shutil.copytree(GAMES, copy)
    (copy / "items.csv").chmod(0o644)
    with open(copy / "items.csv", "a") as handle:
        handle.write("99999,An extra game\n")
    with pytest.raises(DataError, match="items.csv is not the pinned Amazon Video Games build"):
        amazon_games(copy)
    with pytest.raises(DataError, match="needs data.folder"):
        amazon_games(None)
