"""LightningModule wiring the towers, the loss and full-catalog evaluation together."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch

from recsys_tt.data.text import trim
from recsys_tt.model.encoder import Encoder, autocast_dtype
from recsys_tt.model.loss import InBatchSoftmax, LossConfig, effective_sample_share
from recsys_tt.model.metrics import catalog_scores, exclude_seen, ranking_metrics, target_ranks
from recsys_tt.model.towers import TowerConfig, TwoTower
from recsys_tt.model.weights import is_base_weight, load_trainable, sub_state
from recsys_tt.training.checkpoint_files import read_checkpoint, resolve_checkpoint
from recsys_tt.training.logged_clicks import score_logged_slates, weigh_logged_clicks

log = logging.getLogger(__name__)


class TwoTowerModule(pl.LightningModule):
    def __init__(
        self,
        num_items: int,
        tower: TowerConfig = TowerConfig(),  # noqa: B008 (frozen-by-convention config)
        loss: LossConfig = LossConfig(),  # noqa: B008
        lr: float = 1e-3,
        id_lr: float = 5e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.1,
        cache_refresh_steps: int = 20,
        fresh_items: int | None = 256,
        eval_ks: tuple[int, ...] = (10, 20),
        item_chunk_size: int = 512,
        seed: int | None = None,
        init_checkpoint: str | None = None,
        fused_optimizer: bool = False,
        matmul_precision: Literal["highest", "high", "medium"] = "highest",
    ) -> None:
        """Two-tower model, loss and optimisation.

        Args:
            num_items: catalog size (linked from the data).
            tower: backbone, adapters, pooling and user input form.
            loss: temperature and logQ settings of the in-batch softmax.
            lr: AdamW learning rate of adapters, heads and temperature.
            id_lr: learning rate of the item-id vectors.
            weight_decay: AdamW weight decay (not applied to id vectors).
            warmup_steps: linear warm-up steps before cosine decay.
            min_lr_ratio: the cosine decays to this fraction of the learning rate at the last step.
            cache_refresh_steps: re-encode the catalog's text vectors when they are this many steps old; history
                inputs and in-batch items beyond ``fresh_items`` read them (detached) in between. Text users with
                batches of at most ``fresh_items`` items never read them, so never encode them.
            fresh_items: in-batch items encoded with gradients per step (None: all); the rest are cached
                negatives. Encoding items is most of a step's cost, so this sets the speed.
            eval_ks: cut-offs of Recall/NDCG/MRR.
            item_chunk_size: items encoded per forward pass when encoding the catalog.
            seed: with the global step and rank, seeds each step's dropout so resumed runs match; None: the run's
                ``seed_everything`` (0 outside train.py).
            init_checkpoint: start from the trained weights of this checkpoint (or run folder: its best checkpoint)
                with a fresh optimizer and schedule, e.g. to fine-tune on logged feedback (``data.logs``). The tower
                settings must be the checkpoint's. ``--ckpt_path`` instead resumes a run where it stopped.
            fused_optimizer: AdamW's fused kernel, one launch for every parameter instead of several per tensor
                (GPU configs: a step's hundreds of small adapter tensors otherwise cost a launch each).
            matmul_precision: ``torch.set_float32_matmul_precision`` for the run; "high" lets float32 matmuls
                outside autocast use TF32 tensor cores on GPUs.
        """
        seed = 0 if seed is None else seed  # before save_hyperparameters, which records the arguments' values
        super().__init__()
        self.save_hyperparameters()
        for name in ("lr", "id_lr", "cache_refresh_steps", "item_chunk_size", "fresh_items"):
            if getattr(self.hparams, name) is not None and getattr(self.hparams, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self.hparams, name)}.")
        if not eval_ks or min(eval_ks) <= 0:
            raise ValueError(f"model.eval_ks must be positive cut-offs, got {eval_ks}.")
        self.model = TwoTower.from_config(tower, num_items)
        self.loss = InBatchSoftmax(loss, num_items)
        if init_checkpoint is not None:
            path = resolve_checkpoint(init_checkpoint)
            self.load_trainable(read_checkpoint(path)["state_dict"], path)
            log.info("Starting from the weights of %s", path)
        self.strict_loading = False  # checkpoints leave out the frozen backbone
        self.item_tokens: dict[str, torch.Tensor] | None = None
        self._device_item_tokens: dict[str, torch.Tensor] | None = None  # item_tokens on the model's device
        self.item_text_cache: torch.Tensor | None = None  # (N, D) detached catalog text vectors, refreshed in training
        self.cache_step = 0  # the training step that encoded item_text_cache
        self.catalog_text: torch.Tensor | None = None  # (N, D) text vectors during evaluation
        self.autocast_dtype: torch.dtype | None = None  # outside a trainer: the precision it evaluated in
        self.catalog_vectors: torch.Tensor | None = None  # (N, D) item vectors during evaluation
        self.click_weight: torch.Tensor | None = None  # (E,) off-policy weights of the logged clicks, for the run
        self.register_buffer("cold_items", None, persistent=False)  # (N,) bool: held out of training (data.cold_items)

    def load_trainable(self, state: dict[str, torch.Tensor], source: str | Path) -> None:
        """Loads a checkpoint's trainable weights: the towers' (``model.*``) and the loss's (``loss.*``)."""
        load_trainable(self.model, sub_state(state, "model."), source)
        self.loss.load_state_dict(sub_state(state, "loss."))

    def setup(self, stage: str) -> None:
        torch.set_float32_matmul_precision(self.hparams.matmul_precision)
        datamodule = self.trainer.datamodule
        if datamodule.num_items != self.hparams.num_items:
            raise ValueError(f"The data has {datamodule.num_items} items but the model was built for "
                             f"{self.hparams.num_items}; use the dataset the checkpoint was trained on.")
        self.item_tokens = datamodule.item_tokens
        self.cold_items = datamodule.cold_item_mask  # a buffer: it moves with the module
        if stage == "fit":
            counts = datamodule.item_counts
            self.loss.set_item_counts(counts)
            if self.model.config.item_id_embeddings:
                self.model.seen_items.copy_(counts > 0)

    # ----- encoding -----------------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        """The towers with the catalog's item tokens, under the autocast of training steps (or, outside a trainer,
        the precision the model was evaluated in)."""
        precision = autocast_dtype(self.trainer.precision) if self._trainer is not None else self.autocast_dtype
        return Encoder(self.model, self.item_tokens, precision, self.hparams.item_chunk_size)

    def _item_tokens(self, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tokens of items (M,), on their device. With ``tower.bucket_rows`` set they are cut to the longest
        selected text, which reads the lengths on the host; with null they keep the catalog's padded width, a fixed
        shape that an accelerator computes without waiting for the host."""
        if self._device_item_tokens is None or self._device_item_tokens["input_ids"].device != items.device:
            self._device_item_tokens = {k: v.to(items.device) for k, v in self.item_tokens.items()}
        tokens = {name: values[items] for name, values in self._device_item_tokens.items()}
        return tokens if self.model.config.bucket_rows is None else trim(tokens)

    def batch_item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """(M,) in-batch items -> (M, D) vectors (text + id vectors; see ``batch_item_text``)."""
        return self.model.add_item_ids(self.batch_item_text(items), items)

    def batch_item_text(self, items: torch.Tensor) -> torch.Tensor:
        """(M,) in-batch items -> (M, D) text vectors; at most ``fresh_items`` random ones are encoded with gradients.

        The others take their text vector from the catalog cache (refreshed every ``cache_refresh_steps``),
        so they still serve as negatives, and their id vectors still train, at a fraction of the cost.
        """
        fresh = self.hparams.fresh_items
        if self.item_text_cache is not None and not self.model.item_text_trains:  # the cache is exact: nothing moves it
            return self.item_text_cache[items]
        if self.item_text_cache is None or not self._reads_cache(len(items)):
            return self.model.encode_item_text(**self._item_tokens(items))
        order = torch.randperm(len(items), device=items.device)
        encoded = self.model.encode_item_text(**self._item_tokens(items[order[:fresh]]))
        text = torch.cat([encoded, self.item_text_cache[items[order[fresh:]]].to(encoded.dtype)])
        return text[torch.argsort(order)]

    def _reads_cache(self, batch_items: int) -> bool:
        """Whether a batch of this many items takes some of its negatives from the catalog cache."""
        fresh = self.hparams.fresh_items
        return fresh is not None and batch_items > fresh

    # ----- training -----------------------------------------------------------------------------------
    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        torch.manual_seed(hash((self.hparams.seed, self.global_step, self.global_rank)) % 2**31)
        columns = self.hparams.num_items if self.loss.config.negatives == "catalog" else len(batch["items"])
        needs_cache = self.model.user_input.reads_item_vectors or self._reads_cache(columns)
        stale = self.item_text_cache is None or (self.model.item_text_trains and
                                                 self.global_step - self.cache_step >= self.hparams.cache_refresh_steps)
        if needs_cache and stale:
            self.item_text_cache, self.cache_step = self.encoder.item_text(), self.global_step

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        columns, positive = self._columns(batch)
        text = self.batch_item_text(columns)
        items = self.model.add_item_ids(text, columns)
        users = self.model.encode_users(batch, self.item_text_cache, every_position=True)  # (B[, 1 + L], D)
        weight = self.click_weight[batch["click"]] if "click" in batch else None  # (B,)
        if weight is not None:
            self.log("train/click_weight_ess", effective_sample_share(weight), batch_size=len(weight))
            weight = weight[:, None].expand_as(positive) if positive.dim() == 2 else weight
        # One row per (window, position) target. Padding rows (positive -1) stay and the loss ignores them:
        # selecting the real rows would make the host wait for the device to count them.
        users, positive = users.reshape(-1, users.shape[-1]), positive.reshape(-1)
        weight = None if weight is None else weight.reshape(-1)
        loss = self.loss(users, items, positive, columns, weight, held_out=self.cold_items)
        if self.loss.config.text_only and self.model.config.item_id_embeddings:
            text_loss = self.loss(users, text, positive, columns, weight, held_out=self.cold_items)
            self.log("train/text_only_loss", text_loss, batch_size=len(positive))
            loss = loss + self.loss.config.text_only * text_loss
        if "impressions" in batch:
            impressions = self._impression_loss(batch["impressions"])
            self.log("train/impression_loss", impressions, batch_size=len(batch["impressions"]["shown"]))
            loss = loss + self.loss.config.log_impressions * impressions
        self.log("train/loss", loss, prog_bar=True, batch_size=len(positive))
        self.log("train/temperature", self.loss.temperature, batch_size=len(positive))
        return loss

    def _impression_loss(self, batch: dict) -> torch.Tensor:
        """The position-based likelihood of logged slates, for the users as served (``LossConfig.log_impressions``)."""
        shown = batch["shown"]
        items, column = torch.unique(shown.clamp(min=0), return_inverse=True)
        vectors = self.batch_item_vectors(items)  # (M, D)
        users = self.model.encode_users(batch, self.item_text_cache)  # (B, D)
        scores = catalog_scores(users, vectors).gather(1, column)  # (B, K)
        return self.loss.impression_loss(scores, batch["clicked"], shown >= 0)

    def on_train_start(self) -> None:
        clicks = self.trainer.datamodule.logged_clicks
        if clicks is None:
            return
        if self.trainer.datamodule.train_impressions and self.global_step == 0:  # a resumed run keeps its fitted link
            self._calibrate_relevance()
        if self.click_weight is not None:  # a resumed run keeps the weights it started with
            if len(self.click_weight) != len(clicks):
                raise ValueError(f"The checkpoint weighed {len(self.click_weight)} logged clicks but data.logs holds "
                                 f"{len(clicks)}: resume with the log the run started with, or start a new run "
                                 "(model.init_checkpoint) to train on this one.")
            return
        data = self.trainer.datamodule
        self.click_weight = weigh_logged_clicks(clicks, self.encoder, data.log_batch, data.hparams.eval_batch_size,
                                                self.loss.config)
        log.info("Off-policy weights (%s) of %d logged clicks: effective sample share %.3f, largest %.2f",
                 self.loss.config.log_correction, len(clicks), effective_sample_share(self.click_weight),
                 self.click_weight.max())

    def _calibrate_relevance(self) -> None:
        data = self.trainer.datamodule
        slates = data.log.impressions
        scores = score_logged_slates(slates, self.encoder, data.impression_batch, data.hparams.eval_batch_size)
        clicked, shown = torch.as_tensor(slates.clicked), torch.as_tensor(slates.shown >= 0)
        self.loss.calibrate(scores.to(self.device), clicked.to(self.device), shown.to(self.device))
        scale, bias = self.loss.relevance_link.tolist()
        log.info("Impressions: %d slates, %d clicks; relevance link sigmoid(%.2f x score %+.2f), fitted to the "
                 "starting model's scores", len(slates), int(clicked.sum()), scale, bias)

    def _columns(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The softmax's item columns (M,) and each target's column: the batch's items, or the whole catalog."""
        if self.loss.config.negatives == "batch":
            return batch["items"], batch["positive"]
        positive = batch["positive"]
        as_items = torch.where(positive >= 0, batch["items"][positive.clamp(min=0)], positive)
        return torch.arange(self.hparams.num_items, device=positive.device), as_items

    # ----- evaluation ---------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        exact = self.item_text_cache is not None and not self.model.item_text_trains  # a frozen item tower's cache
        self.catalog_text, self.catalog_vectors = self.encoder.catalog_tensors(self.item_text_cache if exact else None)

    on_test_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: dict, prefix: str) -> None:
        users = self.model.encode_users(batch, self.catalog_text)
        scores = exclude_seen(catalog_scores(users, self.catalog_vectors), batch["exclude"])  # (B, N)
        metrics = ranking_metrics(target_ranks(scores, batch["target"]), tuple(self.hparams.eval_ks))
        for name, values in metrics.items():
            self.log(f"{prefix}/{name}", values.mean(), batch_size=len(values), sync_dist=True,
                     prog_bar=name == "ndcg@10")
        if self.cold_items is not None:
            self._log_by_target_kind(metrics, self.cold_items[batch["target"]], prefix)

    def _log_by_target_kind(self, metrics: dict[str, torch.Tensor], cold: torch.Tensor, prefix: str) -> None:
        """The metrics of the users whose target is a cold item and of those whose target is warm."""
        for kind, rows in (("cold", cold), ("warm", ~cold)):
            count = int(rows.sum())  # evaluation may wait for the device; a batch without such users logs nothing
            if not count:
                continue
            for name, values in metrics.items():
                self.log(f"{prefix}_{kind}/{name}", values[rows].mean(), batch_size=count, sync_dist=True)

    # ----- optimisation and checkpoints ---------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        ids = [p for n, p in self.named_parameters() if p.requires_grad and n.startswith("model.item_ids")]
        rest = [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("model.item_ids")]
        groups = [{"params": rest, "lr": hp.lr, "weight_decay": hp.weight_decay}]
        if ids:
            groups.append({"params": ids, "lr": hp.id_lr, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, fused=hp.fused_optimizer or None)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self._lr_factor(step, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _lr_factor(self, step: int, total: int) -> float:
        warmup = self.hparams.warmup_steps
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        floor = self.hparams.min_lr_ratio
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not is_base_weight(k)}
        checkpoint["precision"] = str(self.trainer.precision)  # so exports encode exactly as evaluation did
        if self.item_text_cache is not None:
            checkpoint["item_text_cache"] = self.item_text_cache.cpu()
            checkpoint["item_text_cache_step"] = self.cache_step
        if self.click_weight is not None:
            checkpoint["click_weight"] = self.click_weight.cpu()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "item_text_cache" in checkpoint:
            self.item_text_cache = checkpoint["item_text_cache"].to(self.device)
            self.cache_step = checkpoint.get("item_text_cache_step", 0)
        if "click_weight" in checkpoint:
            self.click_weight = checkpoint["click_weight"].to(self.device)
