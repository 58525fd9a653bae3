"""Checkpoint -> export folder -> offline scoring -> evaluation, on a tiny model and tiny data."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from recsys_tt.export.catalog import add_items
from recsys_tt.export.folder import SIGNING_KEY_ENV, ExportFolder, hashed_files, seal
from recsys_tt.export.index import build_index, exact_top_k, recall_against_exact
from recsys_tt.offline.scoring import evaluate_recommendations, score_users
from recsys_tt.serving.retrieval import search_excluding
from recsys_tt.training.export import export_model
from recsys_tt.training.lightning_cli import main
from tests.helpers import clean_env, plain_peft_text_vectors, write_tiny_dataset
from tests.helpers import train_args as _args


def test_export_folder_describes_itself(flat_export, trained):
    meta = json.loads((flat_export / "meta.json").read_text())
    assert (meta["num_items"], meta["dim"], meta["metric"], meta["factory"]) == (12, 32, "inner_product", "Flat")
    assert meta["ann_recall_at_10"]["value"] == 1.0
    assert meta["source_checkpoint"] == str(trained[0].resolve())
    assert meta["adapters"] == ["item", "user"] and set(meta["sha256"]) == set(hashed_files(["item", "user"]))
    export = ExportFolder.load(flat_export)
    assert export.items["item_id"].tolist()[:2] == ["i0", "i1"]
    assert np.allclose(np.linalg.norm(export.vectors, axis=1), 1.0, atol=1e-5)


def test_flat_search_is_exact_and_never_returns_seen_items(flat_export):
    export = ExportFolder.load(flat_export)
    users = np.arange(len(export.users))
    queries = export.user_vectors(users, "test")
    seen = [export.split.history(u, "test") for u in users]
    rows, scores = search_excluding(export.index, queries, 4, seen)
    brute = queries @ export.vectors.T
    for q, row in enumerate(rows):
        assert not set(row) & set(seen[q])
        allowed = np.delete(brute[q], seen[q])
        kth_best = np.sort(allowed)[::-1][3]
        assert np.all(brute[q, row] >= kth_best - 1e-5)  # tie-aware: anything scored like the k-th may stand in
        assert np.allclose(scores[q], brute[q, row], atol=1e-5)
        one_rows, one_scores = search_excluding(export.index, queries[q: q + 1], 4, seen[q: q + 1])
        assert one_rows[0].tolist() == row.tolist() and np.array_equal(one_scores[0], scores[q])  # single-query path
    few_rows, few_scores = search_excluding(export.index, queries[:1], 12, [np.arange(10)])  # 2 items left
    assert few_rows[0].tolist()[2:] == [-1] * 10 and np.isinf(few_scores[0, 2:]).all()


def test_offline_scoring_reproduces_the_training_test_metrics(flat_export, trained, tmp_path):
    out = tmp_path / "recs.parquet"
    report = score_users(flat_export, out, k=7, split="test")
    recs = pd.read_parquet(out)
    assert report["users"] == 8 and len(recs) == 8 * 7
    assert recs.groupby("user_id")["rank"].apply(list).map(lambda r: r == list(range(1, 8))).all()
    metrics = evaluate_recommendations(out, flat_export, "test", (3, 5))
    for name in ("ndcg@3", "recall@5", "mrr@5"):
        assert metrics[name] == pytest.approx(float(trained[1][f"test/{name}"]), abs=1e-4), name
    export, top5 = ExportFolder.load(flat_export), recs[recs["rank"] <= 5]
    assert metrics["coverage@5"] == pytest.approx(top5["item_id"].nunique() / 12)
    popularity = export.item_popularity[top5["item_id"].map(export.item_rows)]
    assert metrics["novelty@5"] == pytest.approx(float(np.mean(-np.log2(popularity))))


def test_unknown_users_are_reported_not_fatal(flat_export, tmp_path):
    report = score_users(flat_export, tmp_path / "r.parquet", k=3, user_ids=["u1", "nobody"])
    assert report["users"] == 1 and report["unknown_users"] == 1


@pytest.mark.parametrize("factory, params", [("HNSW8", "efSearch=16"), ("IVF2,Flat", "nprobe=2"), ("PQ4", "")])
def test_approximate_indexes_build_and_are_measured(factory, params):
    vectors = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index, _ = build_index(vectors, factory, params)
    recall = recall_against_exact(index, vectors[:20], vectors, k=10)
    assert index.ntotal == 300 and 0.5 < recall <= 1.0
    assert exact_top_k(vectors[:3], vectors, 1)[:, 0].tolist() == [0, 1, 2]


def test_gpu_faiss_builds_on_the_gpu_and_saves_a_cpu_index(monkeypatch):
    """With faiss-gpu and a GPU (stood in for here), training and adding run on the GPU copy."""
    import faiss

    calls = []
    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: "resources", raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu",
                        lambda res, dev, index: calls.append("to_gpu") or faiss.clone_index(index), raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", lambda index: calls.append("to_cpu") or index, raising=False)
    vectors = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    index, _ = build_index(vectors, "IVF2,Flat", "nprobe=2")
    assert calls == ["to_gpu", "to_cpu"] and index.ntotal == 200 and index.is_trained


def test_bad_requests_are_refused_and_leave_exports_intact(flat_export, trained, tmp_path):
    with pytest.raises(ValueError, match="k must be in 1..12"):
        score_users(flat_export, tmp_path / "r.parquet", k=13)
    with pytest.raises(ValueError, match="cannot build"):
        export_model(trained[0], tmp_path / "bad", factory="NotAnIndex")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(FileExistsError, match="overwrite"):
        export_model(trained[0], flat_export)
    with pytest.raises(ValueError, match="split must be one of"):
        score_users(flat_export, tmp_path / "r.parquet", split="train")
    ExportFolder.load(flat_export)  # still valid


def test_tampered_exports_are_refused(flat_export, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(flat_export, copy)
    np.save(copy / "vectors.npy", np.zeros((12, 16), dtype=np.float32))
    with pytest.raises(ValueError, match="vectors.npy changed after"):
        ExportFolder.load(copy)
    shutil.copytree(flat_export, copy, dirs_exist_ok=True)
    (copy / "adapters/user/adapter_model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="adapters/user/adapter_model.safetensors changed after"):
        ExportFolder.load(copy)
    (copy / "index.faiss").unlink()
    with pytest.raises(ValueError, match="missing"):
        ExportFolder.load(copy)


def test_non_finite_vectors_are_refused_naming_the_file_and_row(flat_export, tmp_path):
    import json
    import shutil

    from recsys_tt.files import sha256_file

    copy = tmp_path / "copy"
    shutil.copytree(flat_export, copy)
    vectors = np.load(copy / "vectors.npy")
    vectors[3, 0] = np.nan
    np.save(copy / "vectors.npy", vectors)
    meta = json.loads((copy / "meta.json").read_text())
    meta["sha256"]["vectors.npy"] = sha256_file(copy / "vectors.npy")  # a folder damaged before it was hashed
    (copy / "meta.json").write_text(json.dumps(seal(meta)))
    with pytest.raises(ValueError, match=r"vectors.npy: row 3 \(1 rows in all\) holds NaN or infinite values"):
        ExportFolder.load(copy)


def test_a_config_that_does_not_fit_the_weights_is_refused_in_one_line(flat_export, tmp_path):
    import json
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(flat_export, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["model_hparams"]["tower"]["lora_r"] *= 2
    (copy / "meta.json").write_text(json.dumps(seal(meta)))  # sealed again, as a writer with a bug would
    with pytest.raises(ValueError, match=r"adapters/item/adapter_model.safetensors does not fit the item adapter its "
                                         r"config describes .*size mismatch") as refused:
        _ = ExportFolder.load(copy).encoder  # built on first use
    assert "\n" not in str(refused.value)


def test_added_items_match_a_fresh_encoding_and_can_be_retrieved(flat_export, tmp_path, capsys):
    import shutil

    from recsys_tt.data.tables import DataError

    folder = tmp_path / "export"
    shutil.copytree(flat_export, folder)
    new = tmp_path / "new.csv"
    pd.DataFrame({"item_id": ["n1", "n2"], "title": ["A brand new film", "Another one"],
                  "genres": ["Drama", "Horror"]}).to_csv(new, index=False)
    assert add_items(folder, new)["num_items"] == 14
    assert "encoding items" in capsys.readouterr().err  # a progress bar, for catalogs of millions
    export = ExportFolder.load(folder)
    fresh_text = export.encoder.item_text(export.item_tokens(export.items["text"].tolist()))
    fresh = export.encoder.model.add_item_ids(fresh_text, torch.arange(14)).detach().numpy()
    assert np.allclose(export.vectors[12:], fresh[12:], atol=1e-5)
    assert np.allclose(export.vectors[:12], ExportFolder.load(flat_export).vectors)
    rows, _ = search_excluding(export.index, export.vectors[12:], 1, [np.array([], dtype=np.int64)] * 2)
    assert rows[:, 0].tolist() == [12, 13]
    for bad in (pd.DataFrame({"item_id": ["n3", "n3"], "title": ["x", "y"], "genres": ["a", "b"]}),
                pd.DataFrame({"item_id": ["i0"], "title": ["x"], "genres": ["a"]}),
                pd.DataFrame({"item_id": [5005, None, 5006], "title": ["x", "y", "z"], "genres": ["a"] * 3})):
        bad.to_csv(new, index=False)
        with pytest.raises(DataError, match="item_id"):
            add_items(folder, new)
    assert ExportFolder.load(folder).meta["num_items"] == 14  # the failed additions changed nothing
    pd.DataFrame({"item_id": [5005.0, 5006.0], "title": ["x", "y"], "genres": ["a", "b"]}).to_csv(new, index=False)
    add_items(folder, new)
    assert ExportFolder.load(folder).items["item_id"].tolist()[-2:] == ["5005", "5006"]  # ids as training reads them


def test_bf16_training_metrics_are_reproduced_offline(tmp_path, tiny_bert):
    paths = write_tiny_dataset(tmp_path / "data")
    cli = main(_args(tmp_path, paths, tiny_bert, 3, "--model.eval_ks", "[3,5]", "--trainer.precision", "bf16-mixed",
                     "--best_checkpoint.monitor", "val/mrr@5"))
    folder = export_model(cli.trainer.ckpt_path, tmp_path / "export")  # the checkpoint that was tested
    assert json.loads((folder / "meta.json").read_text())["precision"] == "bfloat16"
    score_users(folder, tmp_path / "recs.parquet", k=7)
    export, recs = ExportFolder.load(folder), pd.read_parquet(tmp_path / "recs.parquet")
    expected = export.user_vectors(np.arange(8), "test") @ export.vectors.T  # bf16 user tower, as evaluated
    rows = recs["item_id"].map(export.item_rows).to_numpy()
    users = recs["user_id"].map({u: i for i, u in enumerate(export.users["user_id"])}).to_numpy()
    assert np.allclose(recs["score"], expected[users, rows], atol=1e-6)  # the predict job ran in bf16 too
    metrics = evaluate_recommendations(tmp_path / "recs.parquet", folder, "test", (3, 5))
    for name in ("ndcg@3", "ndcg@5", "mrr@5"):
        assert metrics[name] == pytest.approx(float(cli.trainer.callback_metrics[f"test/{name}"]), abs=1e-7), name
    copies = tmp_path / "copies.csv"  # new ids, the texts of items 0 and 1: added as the catalog was encoded
    pd.DataFrame({"item_id": ["c0", "c1"], "title": ["Movie number 0", "Movie number 1"],
                  "genres": ["Comedy", "Drama"]}).to_csv(copies, index=False)
    add_items(folder, copies)
    grown = ExportFolder.load(folder)
    original = export.item_rows
    rows = [original["i0"], original["i1"]]
    assert grown.items["text"].tolist()[-2:] == grown.items["text"].iloc[rows].tolist()
    assert np.allclose(grown.text_vectors[-2:], grown.text_vectors[rows], atol=1e-6)
    tokens = grown.item_tokens(grown.items["text"].tolist()[-2:])
    float32 = dataclasses.replace(grown.encoder, precision=None).item_text(tokens).numpy()
    assert not np.allclose(float32, grown.text_vectors[rows], atol=1e-6)  # so the check above sees the precision


def test_new_users_known_only_by_text_or_recent_items_are_scored(flat_export, tmp_path):
    from recsys_tt.data.tables import DataError

    users = tmp_path / "new.jsonl"
    pd.DataFrame({"user_id": ["a", "b", "c"], "text": ["A 30 year old writer.", None, "Likes comedies"],
                  "recent_item_ids": [[], ["i1", "i2", "ghost"], ["i3"]]}).to_json(users, orient="records", lines=True)
    report = score_users(flat_export, tmp_path / "new.parquet", k=4, users_file=users)
    assert report["users"] == 3 and report["unknown_recent_items"] == 1
    recs = pd.read_parquet(tmp_path / "new.parquet")
    assert len(recs) == 12 and not {"i1", "i2"} & set(recs[recs["user_id"] == "b"]["item_id"])
    pd.DataFrame({"user_id": ["d"], "text": [""], "recent_item_ids": [["ghost"]]}).to_json(
        users, orient="records", lines=True)
    with pytest.raises(DataError, match="no text and no known recent item"):
        score_users(flat_export, tmp_path / "new.parquet", k=4, users_file=users)


def test_checkpoint_of_another_backbone_is_refused(trained, tiny_llama, tmp_path):
    from recsys_tt.training.checkpoints import load_checkpoint

    ckpt = torch.load(trained[0], weights_only=True)
    ckpt["hyper_parameters"]["tower"]["backbone"] = tiny_llama  # weights trained on the BERT backbone
    ckpt["datamodule_hyper_parameters"]["backbone"] = tiny_llama
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="does not (fit|match) .*backbone"):
        load_checkpoint(tmp_path / "other.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "junk.ckpt")
    with pytest.raises(ValueError, match="not a recsys_tt training checkpoint"):
        load_checkpoint(tmp_path / "junk.ckpt")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="not a checkpoint torch can read") as refused:
        load_checkpoint(tmp_path / "notes.ckpt")
    assert "weights_only" not in str(refused.value)


def test_two_process_ddp_scoring_merges_shards_into_the_single_process_result(flat_export, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "scripts" / "score_offline.py"
    command = [sys.executable, str(script), "--export", str(flat_export), "--out", str(tmp_path / "ddp.parquet"),
               "--k", "5", "--batch_size", "3", "--devices", "2", "--strategy", "ddp"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=clean_env())
    assert done.returncode == 0, done.stderr[-2000:]
    score_users(flat_export, tmp_path / "one.parquet", k=5, batch_size=3)
    ddp, one = (pd.read_parquet(tmp_path / f"{n}.parquet").sort_values(["user_id", "rank"]).reset_index(drop=True)
                for n in ("ddp", "one"))
    assert ddp[["user_id", "item_id", "rank"]].equals(one[["user_id", "item_id", "rank"]])
    assert np.allclose(ddp["score"], one["score"], atol=1e-5)
    assert not list(tmp_path.glob("*.shard-*"))  # shards merged and removed


def test_a_run_folder_resolves_to_its_best_validation_checkpoint(trained, tmp_path):
    import shutil

    from recsys_tt.training.checkpoint_files import resolve_checkpoint

    runs = shutil.copytree(trained[0].parents[2], tmp_path / "runs")  # the session's run stays untouched
    best = runs / trained[0].relative_to(trained[0].parents[2])  # runs/version_0/checkpoints/best-step=N.ckpt
    run = best.parents[1]
    assert resolve_checkpoint(best) == best
    assert resolve_checkpoint(run) == best and resolve_checkpoint(run.parent) == best
    newer = run.parent / "version_10" / "checkpoints"
    newer.mkdir(parents=True)
    (newer / "best-step=2.ckpt").write_bytes(b"")
    assert resolve_checkpoint(run.parent) == newer / "best-step=2.ckpt"  # version 10 is newer than version 2
    (newer / "best-step=4.ckpt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="holds 2 best-validation checkpoints"):
        resolve_checkpoint(run.parent)
    with pytest.raises(FileNotFoundError, match="No checkpoint or run folder"):
        resolve_checkpoint(tmp_path / "nowhere")


def test_an_export_caught_between_the_swap_renames_still_loads(flat_export, tmp_path):
    import shutil

    shutil.copytree(flat_export, tmp_path / ".export.old")  # the old export renamed away, the new one not yet in
    assert ExportFolder.load(tmp_path / "export").meta["num_items"] == 12


def test_the_item_adapter_loads_with_plain_peft_and_reproduces_the_text_vectors(flat_export, tiny_bert):
    from transformers import AutoModel

    export = ExportFolder.load(flat_export)
    pooled, tokens, hidden = plain_peft_text_vectors(flat_export, tiny_bert)
    assert np.allclose(pooled, export.text_vectors, atol=1e-5)
    assert not np.allclose(AutoModel.from_pretrained(tiny_bert)(**tokens).last_hidden_state.detach().numpy(),
                           hidden, atol=1e-5)  # the adapter changed the base's output


def test_an_export_holds_no_pickle_and_a_model_card(flat_export, trained):
    files = [p for p in flat_export.rglob("*") if p.is_file()]
    mask = os.umask(0)
    os.umask(mask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~mask for p in files)  # safetensors writes 0600 by itself
    assert {p.suffix for p in files} <= {".json", ".md", ".faiss", ".npy", ".parquet", ".safetensors"}
    for path in files:
        head = path.read_bytes()[:4]
        assert not head.startswith(b"\x80") and head != b"PK\x03\x04", path  # pickle; torch.save's zip
        if path.suffix == ".npy":
            np.load(path, allow_pickle=False)
    card = (flat_export / "README.md").read_text()
    meta = json.loads((flat_export / "meta.json").read_text())
    assert meta["test_metrics"]["ndcg@5"] == pytest.approx(float(trained[1]["test/ndcg@5"]))
    assert f"| ndcg@5 | {meta['test_metrics']['ndcg@5']:.4f} |" in card and meta["model_version"] in card
    assert "PeftModel.from_pretrained" in card and '"history_len": 20' in card
    assert "## Licence and intended use" in card and "whoever owns the files" in card  # dataset: files
    assert "second to last\nvalidation, held out of training)" in card
    adapters_readme = (flat_export / "adapters" / "README.md").read_text()
    assert adapters_readme.startswith("# LoRA adapters of a recsys_tt two-tower model") and "`item/`" in adapters_readme


def test_a_format_2_export_is_refused_with_what_to_do(flat_export, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(flat_export, old)
    meta = json.loads((old / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps(meta | {"format_version": 2}))
    with pytest.raises(ValueError, match=r"format 2 \(its weights are a pickle, weights.pt\).*Re-export"):
        ExportFolder.load(old)


def test_the_model_card_names_a_named_data_sets_terms_and_the_backbones_licence():
    from recsys_tt.export.model_card import _data_line, _terms

    tower, data = {"backbone": "sentence-transformers/all-MiniLM-L6-v2"}, {"dataset": "amazon-games",
                                                                           "before": "2016-05-14"}
    assert _data_line(data) == ("Amazon Video Games (2018, 5-core; Ni, Li and McAuley 2019) (rated items), the "
                                "interactions before 2016-05-14")
    terms = _terms(tower, data)
    assert "licence: Apache-2.0" in terms and "research use only" in terms
    assert "GroupLens" in _terms(tower, {"dataset": "ml-1m"})


def test_a_catalog_change_computed_from_a_folder_replaced_since_is_refused(flat_export, tmp_path):
    import shutil

    from recsys_tt.export.catalog import write_catalog
    from recsys_tt.files import FolderBusyError

    folder = tmp_path / "export"
    shutil.copytree(flat_export, folder)
    stale = ExportFolder.load(folder)
    new = tmp_path / "new.csv"
    pd.DataFrame({"item_id": ["n1"], "title": ["A brand new film"], "genres": ["Drama"]}).to_csv(new, index=False)
    add_items(folder, new)  # another writer's change, after `stale` was read
    with pytest.raises(FolderBusyError, match="replaced by another writer"):
        write_catalog(stale, stale.items, stale.text_vectors, stale.vectors, stale.index)
    assert ExportFolder.load(folder).items["item_id"].tolist()[-1] == "n1"  # the other change is kept


def test_an_export_reads_and_writes_only_where_its_runner_says(trained, tmp_path, caplog):
    import shutil
    from pathlib import Path

    ckpt = torch.load(trained[0], weights_only=True)
    data = ckpt["datamodule_hyper_parameters"]
    elsewhere = tmp_path / "theirs"  # a checkpoint from elsewhere, edited to write a cache into a folder it chose
    data["cache_dir"] = str(elsewhere / "cache")
    torch.save(ckpt, tmp_path / "edited.ckpt")
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("interactions", "items", "users"):
        shutil.copy(data[name], mine / Path(data[name]).name)
    export_model(tmp_path / "edited.ckpt", tmp_path / "export", report_users=4,
                 data={"interactions": str(mine / Path(data["interactions"]).name)})
    assert not elsewhere.exists()  # the checkpoint's cache folder was never written
    assert f"interactions {data['items']}" not in caplog.text and f"items {data['items']}" in caplog.text  # shown
    written = json.loads((tmp_path / "export" / "meta.json").read_text())["data_hparams"]
    assert written["interactions"] == str(mine / Path(data["interactions"]).name) and written["cache_dir"] is None
    with pytest.raises(ValueError, match=r"data settings \['batch_size'\] cannot be overridden"):
        export_model(tmp_path / "edited.ckpt", tmp_path / "other", data={"batch_size": "3"})


def _edited(flat_export, tmp_path, edit) -> ExportFolder:
    import shutil

    folder = shutil.copytree(flat_export, tmp_path / "edited")
    meta = json.loads((folder / "meta.json").read_text())
    edit(folder, meta)
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("edit, message", [
    (lambda folder, meta: meta["sha256"].pop("items.parquet"), "sha256 must list exactly"),
    (lambda folder, meta: meta.update(sha256={}), "sha256 must list exactly"),
    (lambda folder, meta: meta["data_hparams"].update(history_len=1), "was edited after export"),
    (lambda folder, meta: meta.update(factory="HNSW32"), "was edited after export"),
    (lambda folder, meta: meta.update(adapters=["../../../../etc"]), "adapters must be distinct names"),
    (lambda folder, meta: (folder / "notes.txt").write_text("x"), "holds files an export does not .*notes.txt"),
    (lambda folder, meta: ((folder / "vectors.npy").unlink(), (folder / "vectors.npy").symlink_to("/dev/zero")),
     "vectors.npy is a link or special file"),
])
def test_an_edited_folder_is_refused_in_one_line_naming_what_changed(flat_export, tmp_path, edit, message):
    folder = _edited(flat_export, tmp_path, edit)
    with pytest.raises(ValueError, match=message) as refused:
        ExportFolder.load(folder)
    assert "\n" not in str(refused.value)


def test_a_signing_key_refuses_unsigned_and_edited_folders(flat_export, tmp_path, monkeypatch):
    unsigned = _edited(flat_export, tmp_path, lambda folder, meta: None)
    monkeypatch.setenv(SIGNING_KEY_ENV, "our secret")
    with pytest.raises(ValueError, match=f"not signed with the key in \\${SIGNING_KEY_ENV}"):
        ExportFolder.load(unsigned)
    signed = tmp_path / "signed"
    unsigned.rename(signed)
    meta = seal(json.loads((signed / "meta.json").read_text()))
    (signed / "meta.json").write_text(json.dumps(meta))
    assert ExportFolder.load(signed).meta["signature"] == meta["signature"]
    # An edit that recomputes model_version, as anyone can, still fails the signature.
    forged = {**meta, "data_hparams": {**meta["data_hparams"], "history_len": 1}}
    monkeypatch.setenv(SIGNING_KEY_ENV, "another key")
    (signed / "meta.json").write_text(json.dumps(seal(forged)))
    monkeypatch.setenv(SIGNING_KEY_ENV, "our secret")
    with pytest.raises(ValueError, match="signed with another key, or edited since"):
        ExportFolder.load(signed)
    monkeypatch.delenv(SIGNING_KEY_ENV)
    assert ExportFolder.load(signed).meta["data_hparams"]["history_len"] == 1  # without a key: sealed, not signed
