"""An export folder written before recsys_tt had its floor folders (commit ece9313: MiniLM, 2 steps on the tiny
dataset, tests/fixtures/export_before_floors) still loads, serves, and re-encodes its catalog as it was exported."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from recsys_tt.serving.recommender import Recommender
from recsys_tt.serving.requests import RecommendRequest
from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # the real MiniLM


def test_an_export_from_before_the_move_loads_serves_and_encodes_as_exported(tmp_path):
    folder = shutil.copytree(ROOT / "tests" / "fixtures" / "export_before_floors", tmp_path / "export")
    recommender = Recommender.load(folder)
    reply = recommender.recommend(RecommendRequest(user_id="u1", k=3, temperature=0.0))
    assert len(reply["items"]) == 3 and reply["model_version"] == recommender.export.meta["model_version"]
    export = recommender.export
    text = export.encoder.item_text(export.item_tokens(export.items["text"].astype(str).tolist()))
    assert np.allclose(text.float().numpy(), export.text_vectors, atol=1e-5)
