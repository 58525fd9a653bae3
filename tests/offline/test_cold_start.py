"""Cold start: items known only by text, and users unseen in training served from their profile and first items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys_tt.data.tables import DataError
from recsys_tt.export.folder import ExportFolder
from recsys_tt.offline.cold_start import cold_item_metrics, new_user_metrics
from tests.helpers import load_script


def test_cold_items_are_ranked_for_users_who_later_take_them(flat_export, tmp_path):
    export = ExportFolder.load(flat_export)
    cold = export.items["item_id"][export.items["train_count"] == 0].tolist()
    assert "i11" in cold  # only ever a held-out item in the tiny data
    future = tmp_path / "future.csv"
    pd.DataFrame({"user_id": ["u0", "u1"], "item_id": ["i11", "i3"]}).to_csv(future, index=False)
    everything = cold_item_metrics(export, str(future), k=len(cold))
    assert everything["users"] == 1 and everything[f"recall@{len(cold)}"] == 1.0  # u1's i3 is not cold
    top1 = cold_item_metrics(export, str(future), k=1)
    u0 = export.users["user_id"].tolist().index("u0")
    cold_rows = np.flatnonzero(export.items["train_count"] == 0)
    unseen = np.setdiff1d(cold_rows, export.split.history(u0, "all"))
    best = unseen[np.argmax(export.vectors[unseen] @ export.user_vectors(np.array([u0]), "all")[0])]
    assert top1["recall@1"] == float(best == export.item_rows["i11"]) and top1["cold_items"] == len(cold_rows)
    assert top1["random_recall@1"] == pytest.approx(1 / len(unseen))
    pd.DataFrame({"user_id": ["u1"], "item_id": ["i3"]}).to_csv(future, index=False)
    with pytest.raises(ValueError, match="cold items"):
        cold_item_metrics(export, str(future))


def test_new_users_are_served_from_profile_and_first_items_against_popularity(flat_export, tmp_path):
    export = ExportFolder.load(flat_export)
    new = tmp_path / "new.csv"
    pd.DataFrame({"user_id": ["n1", "n1", "n2", "n1", "n2", "n2"], "item_id": ["i4", "i2", "i7", "i9", "i1", "i3"],
                  "timestamp": [5, 1, 3, 9, 2, 1]}).to_csv(new, index=False)  # n1: i2 i4 i9; n2: i3 i1 i7
    users = tmp_path / "users.csv"
    pd.DataFrame({"user_id": ["n1", "n2"], "age": [30, 40], "occupation": ["nurse", "artist"]}).to_csv(users,
                                                                                                       index=False)
    rows = new_user_metrics(export, str(new), str(users), [0, 2], k=3)
    assert [(r["context_items"], r["ranker"]) for r in rows][:3] == [
        (0, "recsys_tt, profile + items"), (0, "recsys_tt, items only"), (0, "popularity")]
    assert [r["users"] for r in rows] == [2] * 6  # both have a third item to predict after two
    counts = export.items["train_count"].to_numpy()
    order = np.argsort(np.argsort(counts, kind="stable"))
    rank = {item: int((order > order[export.item_rows[item]]).sum()) for item in ("i2", "i3")}  # next items at n = 0
    expected = np.mean([1 / np.log2(r + 2) if r < 3 else 0.0 for r in rank.values()])
    assert rows[2]["next_ndcg@3"] == pytest.approx(expected)
    popular = np.argsort(-order)[:3]  # at n = 0 nothing is excluded; ``order`` has no ties
    later = [[export.item_rows[i] for i in items] for items in (["i2", "i4", "i9"], ["i3", "i1", "i7"])]
    assert rows[2]["later_precision@3"] == pytest.approx(np.mean([np.isin(popular, seq).mean() for seq in later]))
    with pytest.raises(ValueError, match="more than 3"):
        new_user_metrics(export, str(new), str(users), [3])
    pd.DataFrame({"user_id": ["u1"], "item_id": ["i2"], "timestamp": [1]}).to_csv(tmp_path / "old.csv", index=False)
    with pytest.raises(DataError, match="was in training"):
        new_user_metrics(export, str(tmp_path / "old.csv"), str(users), [0])
    pd.DataFrame({"user_id": ["n3"], "item_id": ["zz"], "timestamp": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="items the export lacks"):
        new_user_metrics(export, str(tmp_path / "bad.csv"), str(users), [0])
    pd.DataFrame({"user_id": ["n3"], "item_id": ["i2"], "timestamp": [1]}).to_csv(tmp_path / "n3.csv", index=False)
    with pytest.raises(DataError, match="no row for user 'n3'"):
        new_user_metrics(export, str(tmp_path / "n3.csv"), str(users), [0])


def test_split_new_users_holds_out_whole_users(tiny_dataset, tmp_path):

    split_new_users = load_script("split_new_users")

    split_new_users.main(tiny_dataset["interactions"], str(tmp_path / "split"), fraction=0.25, seed=1)
    past, new = (pd.read_csv(tmp_path / "split" / f"{name}.csv") for name in ("past", "new_users"))
    assert new["user_id"].nunique() == 2 and not set(new["user_id"]) & set(past["user_id"])
    assert len(past) + len(new) == len(pd.read_csv(tiny_dataset["interactions"]))
    with pytest.raises(ValueError, match="fraction"):
        split_new_users.main(tiny_dataset["interactions"], str(tmp_path / "bad"), fraction=1.0)


def test_cold_user_script_prints_every_row_and_plots(flat_export, tmp_path, capsys):
    import json

    evaluate_cold_users = load_script("evaluate_cold_users")

    new = tmp_path / "new.csv"
    pd.DataFrame({"user_id": ["n1", "n1", "n1"], "item_id": ["i1", "i2", "i3"], "timestamp": [1, 2, 3]}).to_csv(
        new, index=False)
    evaluate_cold_users.main(str(flat_export), str(new), context_sizes=[0, 1], k=2, plot=str(tmp_path / "p.png"))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    rankers = [(r["context_items"], r["ranker"]) for r in lines]
    assert rankers[-1] == (1, "popularity") and len(lines) == 4  # no profile ranker without profiles
    assert (tmp_path / "p.png").stat().st_size > 0
    with pytest.raises(ValueError, match="context_sizes"):
        evaluate_cold_users.main(str(flat_export), str(new), context_sizes=[-1])
