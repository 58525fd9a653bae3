from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys_tt.data.tables import DataError, LeaveOneOut, item_counts, load_interaction_data, read_table
from tests.helpers import write_tiny_dataset


def test_sequences_sort_by_time_and_keep_file_order_on_ties(tiny_dataset):
    data = load_interaction_data(tiny_dataset["interactions"], tiny_dataset["items"], tiny_dataset["users"])
    u0 = data.user_ids.index("u0")
    assert data.items["item_id"].iloc[data.sequences[u0]].tolist() == ["i0", "i1", "i2", "i3", "i4", "i5"]


def test_stable_sort_keeps_file_order_when_rows_are_shuffled_in_time(tmp_path):
    paths = write_tiny_dataset(tmp_path)
    inter = pd.read_csv(paths["interactions"])
    inter = inter.iloc[::-1]  # reverse file order: the tie of u0 must now come out reversed
    inter.to_csv(paths["interactions"], index=False)
    data = load_interaction_data(paths["interactions"], paths["items"])
    u0 = data.user_ids.index("u0")
    assert data.items["item_id"].iloc[data.sequences[u0]].tolist()[:2] == ["i1", "i0"]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_formats_load_the_same_data(tmp_path, fmt):
    csv = load_interaction_data(*write_tiny_dataset(tmp_path / "a").values())
    other = load_interaction_data(*write_tiny_dataset(tmp_path / "b", fmt).values())
    assert csv.user_ids == other.user_ids
    assert all(np.array_equal(a, b) for a, b in zip(csv.sequences, other.sequences))


def test_leave_one_out_split():
    split = LeaveOneOut.split([np.array([5, 6, 7, 8]), np.array([1, 2]), np.array([3])])
    assert split.train[0].tolist() == [5, 6] and split.valid[0] == 7 and split.test[0] == 8
    assert split.train[1].tolist() == [1] and split.valid[1] == -1 and split.test[1] == 2
    assert split.train[2].tolist() == [3] and split.valid[2] == -1 and split.test[2] == -1
    assert split.history(0, "valid").tolist() == [5, 6]
    assert split.history(0, "test").tolist() == [5, 6, 7]  # the validation item precedes the test item
    assert split.history(0, "all").tolist() == [5, 6, 7, 8] and split.history(1, "all").tolist() == [1, 2]
    assert item_counts(split.train, 10).tolist() == [0, 1, 0, 1, 0, 1, 1, 0, 0, 0]


def _rewrite(path, edit):
    frame = pd.read_csv(path)
    edit(frame).to_csv(path, index=False)


@pytest.mark.parametrize(
    "table, edit, message",
    [
        ("interactions", lambda f: f.drop(columns="timestamp"), "lacks column"),
        ("interactions", lambda f: f.assign(item_id=f["item_id"].where(f.index != 3, "nope")), "row 5: item_id 'nope'"),
        ("interactions", lambda f: f.astype({"timestamp": str}).assign(
            timestamp=lambda g: g["timestamp"].where(g.index != 2, "yesterday-ish")), "row 4: timestamp"),
        ("items", lambda f: pd.concat([f, f.iloc[[0]]]), "duplicate item_id 'i0'"),
        ("interactions", lambda f: f.assign(user_id=f["user_id"].where(f.index != 0, "ghost")), "'ghost' is not in"),
    ],
)
def test_bad_input_names_file_row_and_fix(tmp_path, table, edit, message):
    paths = write_tiny_dataset(tmp_path)
    _rewrite(paths[table], edit)
    with pytest.raises(DataError, match=message):
        load_interaction_data(paths["interactions"], paths["items"], paths["users"])


def test_a_ragged_csv_row_is_named_with_the_reason(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_text("user_id,item_id,timestamp\n1,2,3\n1,3,4,5,6\n2,3,4\n")
    with pytest.raises(DataError, match=r"interactions.csv could not be parsed as csv: .*Expected 3 fields in line 3, "
                                        r"saw 5"):
        read_table(path)


def test_missing_and_unsupported_files_are_refused(tmp_path, tiny_dataset):
    with pytest.raises(DataError, match="does not exist"):
        load_interaction_data(tmp_path / "none.csv", tiny_dataset["items"])
    odd = tmp_path / "items.xlsx"
    odd.write_text("x")
    with pytest.raises(DataError, match="unsupported extension"):
        load_interaction_data(tiny_dataset["interactions"], odd)


def test_rated_catalog_drops_items_without_interactions(tmp_path, tiny_dataset):
    items = pd.read_csv(tiny_dataset["items"])
    extra = pd.concat([items.iloc[:3], pd.DataFrame({"item_id": ["unrated"], "title": ["Never seen"],
                                                     "genres": ["Drama"]}), items.iloc[3:]])
    extra.to_csv(tmp_path / "items_extra.csv", index=False)
    everything = load_interaction_data(tiny_dataset["interactions"], tmp_path / "items_extra.csv", catalog="all")
    rated = load_interaction_data(tiny_dataset["interactions"], tmp_path / "items_extra.csv", catalog="rated")
    assert everything.num_items == 13 and "unrated" in set(everything.items["item_id"])
    assert rated.items["item_id"].tolist() == items["item_id"].tolist()
    assert [rated.items["item_id"][s].tolist() for s in rated.sequences] == [
        everything.items["item_id"][s].tolist() for s in everything.sequences]


def test_timestamps_mix_unix_seconds_and_dates_and_a_bad_cell_is_named():
    from recsys_tt.data.tables import parse_timestamps

    mixed = parse_timestamps(pd.Series(["878887116", "2020-01-01T00:00:00Z", "2020-01-01 00:00:10"]), "f.csv")
    assert mixed.tolist() == [878887116.0, 1577836800.0, 1577836810.0]
    with pytest.raises(DataError, match="row 3: timestamp 'yesterday'"):
        parse_timestamps(pd.Series(["878887116", "yesterday", "878887117"]), "f.csv")


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"user_id,item_id,timestamp\n", "no data rows"),
    ("user_id,item_id,timestamp\nJos\xe9,i1,5\n".encode("latin-1"), r"not UTF-8 \(Latin-1\?\)"),
    ("user_id,item_id,timestamp\nu1,i1,5\n".encode("utf-16"), "is UTF-16"),
])
def test_empty_header_only_and_non_utf8_tables_say_so(tmp_path, content, message):
    from recsys_tt.data.tables import read_table

    path = tmp_path / "interactions.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_table(path)


def test_repeated_rows_are_kept_and_reported(tmp_path, caplog):
    paths = write_tiny_dataset(tmp_path)
    _rewrite(paths["interactions"], lambda f: pd.concat([f, f.iloc[[0]]]))
    caplog.set_level("INFO", logger="recsys_tt.data.tables")
    data = load_interaction_data(paths["interactions"], paths["items"], paths["users"])
    assert sum(map(len, data.sequences)) == 49
    assert "1 rows repeat an earlier (user_id, item_id, timestamp)" in caplog.text


def test_targets_that_repeat_a_history_item_are_found():
    split = LeaveOneOut.split([np.array([0, 1, 2, 1]), np.array([3, 4, 5]), np.array([6, 6, 7])])
    assert split.repeated_targets("test").tolist() == [0]  # user 0's test item 1 is in their history
    assert split.repeated_targets("valid").tolist() == [2]  # user 2's validation item 6 is their first item too
