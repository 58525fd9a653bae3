"""MovieLens fetching: GroupLens conversion (on synthetic archives), caching, checksum verification."""

from __future__ import annotations

import io
import zipfile

import pandas as pd
import pytest

from recsys_tt.data import movielens
from recsys_tt.data.tables import load_interaction_data


def _fake_grouplens_zip() -> bytes:
    genres = ["0"] * 19
    toy, heat = list(genres), list(genres)
    toy[3] = toy[4] = toy[5] = "1"  # Animation, Children's, Comedy
    heat[1] = "1"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-100k/u.data", "1\t1\t5\t874965758\n2\t2\t3\t874965700\n1\t2\t4\t874965800\n")
        archive.writestr("ml-100k/u.item", "\n".join([
            "|".join(["1", "Toy Story (1995)", "01-Jan-1995", "", "http://x", *toy]),
            "|".join(["2", "Heat", "15-Dec-1995", "", "http://y", *heat]),
        ]))
        archive.writestr("ml-100k/u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    return buffer.getvalue()


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def fake_grouplens(monkeypatch):
    monkeypatch.setattr(movielens.urllib.request, "urlopen", lambda url, timeout: _Response(_fake_grouplens_zip()))


def test_grouplens_archive_becomes_canonical_files(tmp_path, fake_grouplens):
    folder = movielens.ensure_movielens("ml-100k", tmp_path, source="grouplens")
    items = pd.read_csv(folder / "items.csv", dtype=str)
    assert items.to_dict("records") == [
        {"item_id": "1", "title": "Toy Story", "year": "1995", "genres": "Animation, Children's, Comedy"},
        {"item_id": "2", "title": "Heat", "year": "1995", "genres": "Action"},
    ]
    users = pd.read_csv(folder / "users.csv", dtype=str)
    assert users["gender"].tolist() == ["male", "female"]
    data = load_interaction_data(folder / "interactions.csv", folder / "items.csv", folder / "users.csv")
    assert data.sequences[data.user_ids.index("1")].tolist() == [0, 1]


def test_cache_is_reused_and_corruption_is_caught(tmp_path, fake_grouplens, monkeypatch):
    folder = movielens.ensure_movielens("ml-100k", tmp_path, source="grouplens")
    monkeypatch.setattr(movielens.urllib.request, "urlopen", lambda *a, **k: pytest.fail("cache not reused"))
    assert movielens.ensure_movielens("ml-100k", tmp_path, source="grouplens") == folder
    (folder / "items.csv").write_text("item_id,title\n1,tampered\n")
    with pytest.raises(RuntimeError, match="items.csv is missing or does not match.*delete .*ml-100k to convert"):
        movielens.ensure_movielens("ml-100k", tmp_path)


def test_unreachable_grouplens_is_a_clear_error_when_forced(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(movielens.urllib.request, "urlopen", refuse)
    with pytest.raises(RuntimeError, match="Could not download"):
        movielens.ensure_movielens("ml-100k", tmp_path, source="grouplens")
    assert not (tmp_path / "ml-100k").exists()  # nothing half-written is left behind


def _fake_grouplens_1m_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-1m/ratings.dat", "1::2::5::978300760\n2::1::3::978302109\n1::1::4::978301968\n")
        archive.writestr("ml-1m/movies.dat", "1::Toy Story (1995)::Animation|Children's|Comedy\n"
                                             "2::Jumanji (1995)::Adventure\n3::Heat (1995)::Action|Crime\n")
        archive.writestr("ml-1m/users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    return buffer.getvalue()


def test_grouplens_1m_archive_becomes_canonical_files(tmp_path, monkeypatch):
    monkeypatch.setattr(movielens.urllib.request, "urlopen", lambda url, timeout: _Response(_fake_grouplens_1m_zip()))
    folder = movielens.ensure_movielens("ml-1m", tmp_path, source="grouplens")
    items = pd.read_csv(folder / "items.csv", dtype=str)
    assert items.iloc[0].to_dict() == {"item_id": "Toy Story (1995)", "title": "Toy Story", "year": "1995",
                                       "genres": "Animation, Children's, Comedy"}
    users = pd.read_csv(folder / "users.csv", dtype=str)
    assert users[["age", "gender", "occupation"]].values.tolist() == [["under 18", "female", "K-12 student"],
                                                                        ["56+", "male", "self-employed"]]
    data = load_interaction_data(folder / "interactions.csv", folder / "items.csv", folder / "users.csv",
                                 catalog="rated")
    assert data.items["item_id"].tolist() == ["Toy Story (1995)", "Jumanji (1995)"]  # Heat has no rating
    assert data.sequences[data.user_ids.index("1")].tolist() == [1, 0]  # by time: Jumanji, then Toy Story
