"""Reading export folders: everything scoring and serving need, tied to the exact weights that produced the vectors.

Layout of an export folder::

    meta.json            dims, metric, factory, counts, backbone, sha256 of every other file but README.md,
                         model version (a digest of all that shapes serving), source checkpoint, configs, test
                         metrics, library versions, and an HMAC signature when a signing key is set
    README.md            model card: what was trained on what, how well it did, how to load it
    index.faiss          FAISS index over the item vectors (inner product; L2-normalised unless meta says otherwise)
    vectors.npy          (N, D) float32 item vectors, row-aligned with items.parquet (for exact rescoring)
    text_vectors.npy     (N, D) float32 item text vectors (what item-vector user towers read as history)
    items.parquet        row -> item_id, text, history_name, train_count
    users.parquet        user_id, profile, train_items (rows), valid_item, test_item (row or -1)
    adapters/<tower>/    each tower's LoRA adapter as a peft folder (see ``recsys_tt.model.weights``)
    adapters/README.md   how to load the adapters with peft alone
    towers.safetensors   the other trained weights: heads, id vectors, history input layer, temperature

Nothing in it is pickled. ``recsys_tt.training.export`` writes them; reading one needs no training code. The file
set is exact: a load refuses any other file, link or special file, and any file whose sha256 or whose meta.json
settings differ from what ``model_version`` sealed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recsys_tt.data.tables import LeaveOneOut
from recsys_tt.data.text import TextTemplates, tokenize_table
from recsys_tt.data.user_inputs import UserFeatures
from recsys_tt.files import restore_interrupted_swap, verify_digests
from recsys_tt.model.backbone import load_tokenizer
from recsys_tt.model.encoder import Encoder, parse_dtype
from recsys_tt.model.towers import TowerConfig, TwoTower
from recsys_tt.model.weights import ADAPTERS, load_towers, weight_files

FORMAT_VERSION = 4  # 4: model_version seals meta.json's settings and every file (3: the weights only)
READABLE_FORMATS = (3, 4)  # 2: one weights.pt pickle, no longer read
DATA_FILES = ("index.faiss", "vectors.npy", "text_vectors.npy", "items.parquet", "users.parquet")
ADAPTER_NAMES = ("item", "user", "shared")
CARD = "README.md"  # the model card, written from meta.json after it: not hashed
SIGNING_KEY_ENV = "RECSYS_TT_SIGNING_KEY"
"""When set, exports are signed (HMAC-SHA256 of meta.json) and loads refuse unsigned or edited folders."""
SERVING_SETTINGS = ("format_version", "dim", "metric", "normalized", "factory", "search_params", "num_items",
                    "num_users", "precision", "backbone", "adapters", "sha256", "model_hparams", "data_hparams")
"""meta.json's entries that shape what a server answers: ``model_version`` digests them (file digests included)."""


def require_finite(vectors: np.ndarray | torch.Tensor, source: str | Path, fix: str) -> None:
    """Refuses vectors with a NaN or infinite value, naming the first such row: served, they would break every
    answer that ranks them, and the index would hold them silently."""
    bad = ~np.isfinite(np.asarray(vectors)).all(axis=-1)
    if bad.any():
        raise ValueError(f"{source}: row {int(np.flatnonzero(bad)[0])} ({int(bad.sum())} rows in all) holds NaN or "
                         f"infinite values; {fix}.")


def hashed_files(adapters: list[str], format_version: int = FORMAT_VERSION) -> list[str]:
    """The files whose sha256 meta.json records: every file but meta.json itself and the model card (format 3 did
    not hash the adapters' README)."""
    return [*DATA_FILES, *weight_files(adapters), *([f"{ADAPTERS}/README.md"] if format_version > 3 else [])]


def model_version(meta: dict) -> str:
    """A short digest of everything that shapes a served slate: the settings of ``SERVING_SETTINGS`` and, through
    ``sha256``, every file. Format 3 folders digested their weights only."""
    if meta.get("format_version") == 3:
        weights = "".join(meta["sha256"][f] for f in weight_files(meta["adapters"]))
        return hashlib.sha256(weights.encode()).hexdigest()[:16]
    settings = json.dumps({k: meta.get(k) for k in SERVING_SETTINGS}, sort_keys=True)
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


def seal(meta: dict) -> dict:
    """meta.json as a writer finishes it: its model_version, and its signature when a signing key is set."""
    meta = {k: v for k, v in meta.items() if k != "signature"} | {"model_version": model_version(meta)}
    key = os.environ.get(SIGNING_KEY_ENV)
    return meta | {"signature": _signature(meta, key)} if key else meta


def _signature(meta: dict, key: str) -> str:
    body = json.dumps({k: v for k, v in meta.items() if k != "signature"}, sort_keys=True).encode()
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def check_manifest(folder: Path, meta: dict) -> None:
    """Refuses a folder whose files are not exactly those its format holds (regular files, inside the folder), whose
    contents differ from their sha256, or whose meta.json differs from what model_version (and, with a signing key,
    the signature) sealed. Names come from the code, never from meta.json, so no entry can point elsewhere."""
    adapters = meta.get("adapters")
    if (not isinstance(adapters, list) or not adapters or len(set(map(str, adapters))) != len(adapters)
            or not set(adapters) <= set(ADAPTER_NAMES)):
        raise ValueError(f"{folder / 'meta.json'}: adapters must be distinct names of {ADAPTER_NAMES}, got "
                         f"{adapters!r}; re-export it.")
    expected = set(hashed_files(adapters, meta["format_version"]))
    unhashed = {"meta.json", CARD, f"{ADAPTERS}/README.md"}
    paths = list(folder.rglob("*"))
    odd = [p for p in paths if p.is_symlink() or not (p.is_dir() or p.is_file())]
    if odd:
        raise ValueError(f"{folder}: {odd[0].relative_to(folder)} is a link or special file; an export holds regular "
                         "files only. Re-export it.")
    present = {p.relative_to(folder).as_posix() for p in paths if p.is_file()} - (unhashed - expected)
    missing, extra = sorted(expected - present), sorted(present - expected)
    if missing:
        raise ValueError(f"{folder} is not a complete recsys_tt export (missing {missing}); re-run "
                         "scripts/export_index.py.")
    if extra:
        raise ValueError(f"{folder} holds files an export does not ({extra[:5]}); remove them or re-export it.")
    recorded = meta.get("sha256")
    if not isinstance(recorded, dict) or set(recorded) != expected:
        raise ValueError(f"{folder / 'meta.json'}: sha256 must list exactly {sorted(expected)}; the folder was "
                         "edited after export. Re-export it.")
    verify_digests(folder, recorded, "re-export it, or add items with scripts/add_items.py only.")
    if meta.get("model_version") != model_version(meta):
        raise ValueError(f"{folder / 'meta.json'} was edited after export: its settings no longer give its "
                         f"model_version {meta.get('model_version')!r}. Re-export it.")
    key = os.environ.get(SIGNING_KEY_ENV)
    if key and not hmac.compare_digest(str(meta.get("signature", "")), _signature(meta, key)):
        raise ValueError(f"{folder / 'meta.json'} is not signed with the key in ${SIGNING_KEY_ENV} (unsigned, "
                         "signed with another key, or edited since); serve only folders exported with that key.")


def dataset_user_batches(features: UserFeatures, split: LeaveOneOut, users: np.ndarray, stage: str,
                         batch_size: int = 256) -> Iterator[dict[str, torch.Tensor]]:
    """User-tower inputs of dataset users (indices) with the history that precedes their ``stage`` target."""
    for start in range(0, len(users), batch_size):
        chunk = np.asarray(users[start: start + batch_size])
        yield features.batch(chunk, [split.history(u, stage) for u in chunk])


@dataclass
class ExportFolder:
    """A checked export folder; the model is rebuilt only when user vectors are asked for."""

    folder: Path
    meta: dict
    items: pd.DataFrame
    users: pd.DataFrame
    text_vectors: np.ndarray
    vectors: np.ndarray
    index: object
    _encoder: Encoder | None = field(default=None, repr=False, compare=False)  # built on first use; catalog-free,
    # so ``dataclasses.replace`` with another catalog keeps it

    @classmethod
    def load(cls, folder: str | Path) -> ExportFolder:
        import faiss

        folder = Path(folder)
        restore_interrupted_swap(folder)
        if not (folder / "meta.json").exists():
            raise ValueError(f"{folder} is not a recsys_tt export (no meta.json); write one with "
                             "scripts/export_index.py.")
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{folder / 'meta.json'} is not valid JSON ({err}); the export is damaged, re-export "
                             "it.") from err
        if meta.get("format_version") not in READABLE_FORMATS:
            old = " (its weights are a pickle, weights.pt)" if meta.get("format_version") == 2 else ""
            raise ValueError(f"{folder} has export format {meta.get('format_version')}{old}; this recsys_tt reads "
                             f"{', '.join(map(str, READABLE_FORMATS))}. Re-export it with scripts/export_index.py.")
        check_manifest(folder, meta)
        vectors, text = np.load(folder / "vectors.npy"), np.load(folder / "text_vectors.npy")
        index = faiss.read_index(str(folder / "index.faiss"))
        expected = (meta["num_items"], meta["dim"])
        for name, shape in (("vectors.npy", vectors.shape), ("text_vectors.npy", text.shape),
                            ("index.faiss", (index.ntotal, index.d))):
            if tuple(shape) != expected:
                raise ValueError(f"{folder / name} holds {tuple(shape)} but meta.json says {expected}; "
                                 "the folder was modified after export. Re-export it.")
        for name, values in (("vectors.npy", vectors), ("text_vectors.npy", text)):
            require_finite(values, folder / name, "re-export it")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"{folder / 'index.faiss'} does not use inner product; re-export it.")
        return cls(folder, meta, pd.read_parquet(folder / "items.parquet"), pd.read_parquet(folder / "users.parquet"),
                   text, vectors, index)

    @property
    def encoder(self) -> Encoder:
        """The towers, rebuilt on first use from the recorded config and the saved weights, checked against
        meta.json."""
        if self._encoder is None:
            self._encoder = self._load_encoder()
        return self._encoder

    def _load_encoder(self) -> Encoder:
        hp = self.meta["model_hparams"]
        config = TowerConfig(**hp["tower"])
        model = TwoTower.from_config(config, hp["num_items"])
        load_towers(model, self.folder)  # their sha256 was checked on load
        if model.dim != self.meta["dim"]:
            raise ValueError(f"The model gives {model.dim}-d vectors but the index holds {self.meta['dim']}-d.")
        return Encoder(model.eval(), None, parse_dtype(self.meta["precision"]), hp["item_chunk_size"])

    def item_tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Item texts tokenised as the export's catalog was (its tokenizer and length cap)."""
        return tokenize_table(self.tokenizer, texts, self.meta["data_hparams"]["max_item_tokens"])

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.meta["data_hparams"]["backbone"])

    @cached_property
    def templates(self) -> TextTemplates:
        return TextTemplates(**self.meta["data_hparams"]["templates"])

    @cached_property
    def item_ids(self) -> np.ndarray:
        """Row -> item id, a string as training read it."""
        return self.items["item_id"].astype(str).to_numpy()

    @cached_property
    def item_rows(self) -> dict[str, int]:
        """Item id -> row of the index, vectors and items table."""
        return {item: i for i, item in enumerate(self.item_ids)}

    @cached_property
    def user_ids(self) -> np.ndarray:
        """User index -> user id, a string as training read it."""
        return self.users["user_id"].astype(str).to_numpy()

    @cached_property
    def user_rows(self) -> dict[str, int]:
        """User id -> user index (row of the users table)."""
        return {user: i for i, user in enumerate(self.user_ids)}

    @cached_property
    def item_popularity(self) -> np.ndarray:
        """(N,) share of users who had each item in training, add-one smoothed (for novelty)."""
        return (self.items["train_count"].to_numpy() + 1.0) / (len(self.users) + 1.0)

    @cached_property
    def split(self) -> LeaveOneOut:
        return LeaveOneOut([np.asarray(t, dtype=np.int64) for t in self.users["train_items"]],
                           self.users["valid_item"].to_numpy(), self.users["test_item"].to_numpy())

    @cached_property
    def user_features(self) -> UserFeatures:
        hp = self.meta["data_hparams"]
        return UserFeatures.build(self.encoder.model.user_input, self.users["profile"].tolist(),
                                  self.items["history_name"].tolist(), self.templates,
                                  self.tokenizer, hp["history_len"], hp["max_user_tokens"],
                                  hp["max_profile_tokens"])

    def user_vectors(self, users: np.ndarray, stage: str, batch_size: int = 256) -> np.ndarray:
        """(U, D) vectors of dataset users (indices) with the history that precedes their ``stage`` target."""
        batches = dataset_user_batches(self.user_features, self.split, users, stage, batch_size)
        return self.encoder.users(batches, self.text_vectors)

    def new_user_vectors(self, profiles: list[str], histories: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """(U, D) vectors of users known only by free text and/or recent item rows (cold start)."""
        batches = (self.user_features.batch_from_text(profiles[i: i + batch_size], histories[i: i + batch_size])
                   for i in range(0, len(profiles), batch_size))
        return self.encoder.users(batches, self.text_vectors)
