"""User and item towers: one frozen transformers backbone, LoRA adapters (peft), pooling, projection, L2 norm.

Items are encoded from text, plus an optional learned id vector for items seen in training (unseen items
fall back to text alone, so cold start keeps working). Users are encoded either from text, or from the
sequence of their history items' vectors fed to the backbone as input embeddings after a short profile-text
prefix (HLLM-style): one position per item, far cheaper than spelling every title out.
"""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn

from recsys_tt.data.text import trim
from recsys_tt.data.user_inputs import user_input_mode
from recsys_tt.model.backbone import (
    DEFAULT_BACKBONE,
    attention_kernels,
    block_list,
    bound_kernel_cache,
    default_lora_targets,
    disable_dropout,
    enable_checkpointing,
    first_blocks,
    load_model,
)
from recsys_tt.model.pooling import attention_mask, length_groups, pool, running_pool

log = logging.getLogger(__name__)

ID_PRIOR_RIDGE = 0.1
"""Ridge of the text -> id vector regression (``TwoTower.predicted_item_ids``). Text vectors have length 1, so X^T X has
a diagonal near (items / dimensions), tens to hundreds: 0.1 only steadies directions no text spans. On Amazon Video
Games (16,149 items) 0.01-0.3 predicted new items equally well, 1 and above worse."""


@dataclass
class TowerConfig:
    """Backbone, adapters and heads of both towers."""

    backbone: str = DEFAULT_BACKBONE
    """A local folder or a Hugging Face model name; the MiniLM names resolve to the packaged weights."""
    pooling: Literal["mean", "cls", "last"] = "mean"
    """How token states become one vector: mean over tokens, first token, or last non-pad token (decoders)."""
    user_pooling: Literal["mean", "cls", "last"] | None = None
    """The user tower's pooling; None: as ``pooling``. For item-vector users, ``last`` is the state at the most
    recent item (as in SASRec), ``mean`` averages over the profile and every history item."""
    projection_dim: int | None = None
    """Output dimension of a linear head after pooling; None keeps the backbone's hidden size."""
    lora_r: int = 8
    """Rank of each LoRA update (its trainable size grows linearly with it)."""
    lora_alpha: int = 16
    """LoRA scale numerator: updates are multiplied by lora_alpha / lora_r."""
    lora_dropout: float = 0.05
    """Dropout on each adapted layer's input to its LoRA branch (training only); costly on CPU, where every adapted
    layer draws a mask over its whole input."""
    lora_targets: list[str] | str | None = None
    """Module names LoRA adapts, or "all-linear" (every linear layer of the blocks, any architecture); None picks
    per-architecture defaults (query/value for BERT-likes)."""
    shared_adapter: bool = False
    """One adapter for both towers instead of one per tower (the frozen base is always shared)."""
    user_input: Literal["text", "item_vectors"] = "item_vectors"
    """Users as text (profile + recent item names) or as their history items' vectors after a profile prefix."""
    user_layers: int | None = None
    """Item-vector users pass through only the backbone's first this many blocks (None: all of them). A history of
    item vectors is not language, so the upper blocks add little there, and each block dropped saves its share of
    the user tower's cost; the item tower always uses every block. Under DDP the user adapter's skipped blocks get
    no gradient: set the strategy's ``find_unused_parameters``."""
    item_id_embeddings: bool = True
    """Add a learned id vector to the text vector of items seen in training."""
    item_id_max_norm: float | None = None
    """Caps each id vector's length (a text vector's is 1), so an item's vector stays near its text vector: what ranks
    an item must then be in its text, where items without an id vector (cold ones) share it. None: no cap."""
    item_id_dropout: float = 0.0
    """In training, the share of item occurrences (softmax columns, history inputs) that go without their id vector,
    drawn afresh every step. Items added after training have no id vector, so without this they are vectors of a
    kind the model never ranked; dropping ids teaches the text vector alone to sit where the item belongs."""
    unseen_items: Literal["predicted_ids", "text"] = "predicted_ids"
    """Where an item without a trained id vector (a cold item, or one added after training) goes: its text vector plus
    the id vector its text predicts (``TwoTower.predicted_item_ids``), or its text vector alone. The prediction suits
    models whose id vectors are long and whose text vectors were never trained to rank alone (Amazon Video Games);
    text alone suits models trained with ``loss.text_only`` (Amazon Beauty: cold NDCG@10 0.0054 against 0.0043)."""
    unseen_item_boost: float = 0.0
    """Items without a trained id vector score (1 + this) times their cosine with a user: their vector is scaled. A
    trained id vector carries what text cannot (how popular an item is, what it is bought with), so an item placed by
    its text alone loses every close call against trained ones; the boost is a prior that new items are as wanted as
    their text says. Choose it on validation (``--data.cold_items``); 0 leaves vectors unit length."""
    backbone_init: Literal["pretrained", "random"] = "pretrained"
    """The backbone's weights: its language pretraining, or its architecture randomly initialised (a fixed seed),
    which measures what the pretraining contributes."""
    train_adapters: bool = True
    """Train the LoRA adapters. Off, they stay at their initial identity, so the backbone is the frozen pretrained
    model and only the heads (``projection_dim``), the history input and the id vectors train."""
    train_item_adapter: bool = True
    """Train the item tower's adapter (with ``train_adapters``). Off, an item's text vector is the pretrained backbone's
    (through the item head): an item never trained on is then placed exactly as the trained ones were, where a trained
    item adapter can learn the training items' titles by heart and leave the others behind."""
    backbone_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Storage dtype of the frozen base weights (bfloat16 halves memory on GPUs)."""
    backbone_dropout: bool = False
    """Keep the frozen backbone's own dropout layers active in training. Off, only LoRA dropout regularises:
    the base weights do not train, and on CPU drawing dropout masks is a quarter of a step's time."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (non-reentrant) to fit longer inputs or bigger models."""
    bucket_rows: int | None = 16
    """Encode texts sorted by length in groups of this many rows, each padded only to its own longest row
    (None: one batch as given; training then pads item texts to the catalog's longest, a fixed shape that a GPU step
    computes without the host reading any lengths). Padding is most of a mixed-length batch's tokens on CPUs."""

    def __post_init__(self) -> None:
        if self.lora_r <= 0:
            raise ValueError(f"lora_r must be positive, got {self.lora_r}.")
        if self.projection_dim is not None and self.projection_dim <= 0:
            raise ValueError(f"projection_dim must be positive or null, got {self.projection_dim}.")
        reads_item_vectors = user_input_mode(self.user_input).reads_item_vectors
        if reads_item_vectors and self.pooling_of("user") == "cls":
            raise ValueError("user_pooling: cls cannot summarise a causal item history; use mean or last.")
        if self.bucket_rows is not None and self.bucket_rows <= 0:
            raise ValueError(f"bucket_rows must be positive or null, got {self.bucket_rows}.")
        if self.user_layers is not None and (self.user_layers <= 0 or not reads_item_vectors):
            raise ValueError(f"user_layers ({self.user_layers}) must be positive and needs user_input: item_vectors.")
        if self.item_id_max_norm is not None and self.item_id_max_norm <= 0:
            raise ValueError(f"item_id_max_norm must be positive or null, got {self.item_id_max_norm}.")
        if not 0 <= self.unseen_item_boost < math.inf:
            raise ValueError(f"unseen_item_boost must be >= 0, got {self.unseen_item_boost}.")
        if not 0 <= self.item_id_dropout < 1:
            raise ValueError(f"item_id_dropout must be in [0, 1), got {self.item_id_dropout}.")
        if not self.train_item_adapter and self.shared_adapter:
            raise ValueError("train_item_adapter: false needs an adapter per tower; set shared_adapter: false.")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")

    def pooling_of(self, tower: str) -> str:
        return (self.user_pooling or self.pooling) if tower == "user" else self.pooling


class TwoTower(nn.Module):
    """Encodes items and users into one L2-normalised space; dot product = cosine similarity."""

    def __init__(self, backbone: nn.Module, config: TowerConfig, num_items: int,
                 seen_items: torch.Tensor | None = None) -> None:
        super().__init__()
        bound_kernel_cache()
        self.config = config
        self.num_items = num_items
        hidden = backbone.config.hidden_size
        self.dim = config.projection_dim or hidden
        backbone.train()  # from_pretrained returns eval mode
        if not config.backbone_dropout:
            disable_dropout(backbone)
        if getattr(backbone, "pooler", None) is not None:
            # Towers pool last_hidden_state themselves: a BERT-style pooler would cost compute, and adapted (all-linear)
            # it would hold parameters that never get a gradient, which DDP refuses.
            backbone.pooler = None
        if config.gradient_checkpointing:
            enable_checkpointing(backbone)
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=config.lora_targets or default_lora_targets(backbone))
        self.adapters = ["shared"] if config.shared_adapter else ["item", "user"]
        with warnings.catch_warnings():  # peft asks the deprecated is_gradient_checkpointing; not ours to fix
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            self.encoder = get_peft_model(backbone, lora, adapter_name=self.adapters[0])
        for name in self.adapters[1:]:
            self.encoder.add_adapter(name, lora)
        self._adapter_params = [(n, p, config.train_adapters and (config.train_item_adapter or ".item." not in n))
                                for n, p in self.encoder.named_parameters() if "lora_" in n]
        self._causal = any(getattr(m, "is_causal", False) for m in backbone.modules())  # a decoder's text attention
        self._blocks = block_list(self.encoder) if config.user_layers is not None else None  # found once
        self.heads = nn.ModuleDict({t: self._head(hidden) for t in ("item", "user")})
        # Whether training moves the items' text vectors; if not, a catalog cache of them is exact for the whole run.
        item_adapter = any(trains for name, _, trains in self._adapter_params if ".user." not in name)
        self.item_text_trains = item_adapter or any(p.requires_grad for p in self.heads["item"].parameters())
        if config.item_id_embeddings:
            self.item_ids = nn.Embedding(num_items, self.dim)
            nn.init.zeros_(self.item_ids.weight)  # step 0 is the pure text model
            seen = torch.ones(num_items, dtype=torch.bool) if seen_items is None else seen_items.bool()
            self.register_buffer("seen_items", seen, persistent=True)
        if config.user_layers is not None and config.user_layers > backbone.config.num_hidden_layers:
            raise ValueError(f"user_layers {config.user_layers} exceeds the backbone's "
                             f"{backbone.config.num_hidden_layers} blocks.")
        self.user_input = user_input_mode(config.user_input)
        if self.user_input.reads_item_vectors:
            self.history_in = nn.Linear(self.dim, hidden)
            # The profile's padding sits between it and the history, so positions must skip it (else a user's
            # vector would depend on the longest profile in their batch). Backbones without position_ids keep it.
            self._takes_positions = "position_ids" in inspect.signature(backbone.forward).parameters
            if not self._takes_positions:
                log.warning("%s takes no position_ids: history users depend slightly on their batch's padding.",
                            type(backbone).__name__)
        self._train_all_adapters()

    @classmethod
    def from_config(cls, config: TowerConfig, num_items: int) -> TwoTower:
        """Loads the configured backbone and builds the towers around it."""
        return cls(load_model(config.backbone, config.backbone_dtype, config.backbone_init), config, num_items)

    def _head(self, hidden: int) -> nn.Module:
        return nn.Linear(hidden, self.config.projection_dim) if self.config.projection_dim else nn.Identity()

    def _activate(self, tower: str) -> None:
        name = "shared" if self.config.shared_adapter else tower
        if self.encoder.active_adapter != name:
            self.encoder.set_adapter(name)
            self._train_all_adapters()

    def _train_all_adapters(self) -> None:
        # peft freezes inactive adapters (on add and on switch); both towers train in every step.
        for _, p, trains in self._adapter_params:
            p.requires_grad_(trains)

    def _encode(self, tower: str, attention_mask: torch.Tensor, **inputs) -> torch.Tensor:
        self._activate(tower)
        groups = length_groups(attention_mask, self.config.bucket_rows)
        if len(groups) == 1:
            return self._encode_padded(tower, attention_mask, **inputs)
        # Each row's vector depends on its own tokens only, so encoding groups separately changes no result.
        parts = [trim({"attention_mask": attention_mask[rows], **{k: v[rows] for k, v in inputs.items()}})
                 for rows in groups]
        vectors = [self._encode_padded(tower, part.pop("attention_mask"), **part) for part in parts]
        return torch.cat(vectors)[torch.argsort(torch.cat(groups))]

    def _encode_padded(self, tower: str, padding: torch.Tensor, **inputs) -> torch.Tensor:
        dtype = self.encoder.get_input_embeddings().weight.dtype
        attention = attention_mask(padding, self.encoder.config._attn_implementation, dtype, self._causal)
        with attention_kernels(padding.device, self.config.gradient_checkpointing):
            hidden = self.encoder(attention_mask=attention, **inputs).last_hidden_state  # (B, T, H)
        pooled = pool(hidden, padding, self.config.pooling_of(tower))
        return F.normalize(self.heads[tower](pooled).float(), dim=-1)

    def encode_item_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Item texts (M, T) -> (M, D) text vectors, before id vectors are added."""
        return self._encode("item", attention_mask, input_ids=input_ids)

    def grow_items(self, num_items: int) -> None:
        """Makes room for items appended to the catalog since training: their id vectors start at zero and unseen,
        so each keeps its text vector until something trains its id (``recsys_tt.offline.item_refresh``)."""
        if num_items < self.num_items:
            raise ValueError(f"The catalog has {num_items} items, fewer than the model's {self.num_items}.")
        if self.config.item_id_embeddings and num_items > self.num_items:
            old = self.item_ids.weight.data
            self.item_ids = nn.Embedding(num_items, self.dim, device=old.device, dtype=old.dtype)
            nn.init.zeros_(self.item_ids.weight)
            self.item_ids.weight.data[: len(old)] = old
            unseen = torch.zeros(num_items - len(old), dtype=torch.bool, device=old.device)
            self.seen_items = torch.cat([self.seen_items, unseen])
        self.num_items = num_items

    @torch.no_grad()
    def predicted_item_ids(self, text: torch.Tensor, rows: torch.Tensor, ridge: float = ID_PRIOR_RIDGE) -> torch.Tensor:
        """(len(rows), D) the id vectors that the text vectors of ``rows`` predict; ``text`` holds every catalog
        item's text vector (N, D).

        A ridge regression from text vectors to id vectors, fitted over the items with a trained id vector outside
        ``rows``: the expected id vector given the text. With its text vector alone an item sits far from every user
        when id vectors are long (a length of 3 is typical), so a new or cold item could never rank; the predicted
        id vector is the prior mean that serving, directed exploration and the item refresh start from.
        """
        fitted = self._has_ids(len(text))
        fitted[rows] = False
        x = text[fitted].double()
        if len(x) < 2:
            raise ValueError(f"Predicting id vectors from text needs items with trained id vectors; {len(x)} have one.")
        y = self._id_vectors(torch.nonzero(fitted).squeeze(1)).double()
        gram = x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        return (text[rows].double() @ torch.linalg.solve(gram, x.T @ y)).to(text.dtype)

    def unseen_item_ids(self, text: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), D) the id vectors of items without a trained one, as ``config.unseen_items`` places them."""
        if self.config.unseen_items == "text":
            return torch.zeros(len(rows), text.shape[1], dtype=text.dtype, device=text.device)
        return self.predicted_item_ids(text, rows)

    def boost_unseen(self, vectors: torch.Tensor) -> torch.Tensor:
        """The vectors (..., D) of items without training interactions, scaled by 1 + ``config.unseen_item_boost``."""
        return vectors * (1.0 + self.config.unseen_item_boost)

    def catalog_item_vectors(self, text: torch.Tensor) -> torch.Tensor:
        """(N, D) vectors of the whole catalog from its text vectors: trained id vectors where items have one, the
        others placed by ``unseen_item_ids`` and boosted (``boost_unseen``)."""
        vectors = self.add_item_ids(text, torch.arange(len(text), device=text.device))
        missing = self._without_ids(len(text))
        if len(missing):
            placed = F.normalize(text[missing] + self.unseen_item_ids(text, missing), dim=-1)
            vectors[missing] = self.boost_unseen(placed)
        return vectors

    @torch.no_grad()
    def fill_item_ids(self, text: torch.Tensor) -> None:
        """Gives every catalog item without an id vector the one ``unseen_item_ids`` places it with, from now on its
        own (so a refresh's prior centres on it); ``text`` (N, D) holds the catalog's text vectors, N >= the model's
        items."""
        if not self.config.item_id_embeddings:
            return
        self.grow_items(len(text))
        missing = self._without_ids(len(text))
        if len(missing):
            self.item_ids.weight[missing] = self.unseen_item_ids(text, missing).to(self.item_ids.weight.dtype)
            self.seen_items[missing] = True

    def _has_ids(self, count: int) -> torch.Tensor:
        """(count,) bool: which rows of a catalog of ``count`` items have an id vector (unseen and added ones not)."""
        known = torch.zeros(count, dtype=torch.bool, device=self.seen_items.device)
        n = min(count, self.num_items)
        known[:n] = self.seen_items[:n]
        return known

    def _without_ids(self, count: int) -> torch.Tensor:
        if not self.config.item_id_embeddings:
            return torch.zeros(0, dtype=torch.long)
        return torch.nonzero(~self._has_ids(count)).squeeze(1)

    def add_item_ids(self, text: torch.Tensor, items: torch.Tensor | None) -> torch.Tensor:
        """Text vectors (..., D) of items (...) -> item vectors: + id vector where the item was seen in training.

        Indices >= num_items (items added after training) and unseen items keep their text vector.
        """
        if not self.config.item_id_embeddings or items is None:
            return text
        index = items.clamp(max=self.num_items - 1)
        known = (items < self.num_items) & self.seen_items[index]
        if self.training and self.config.item_id_dropout:
            known = known & (torch.rand(items.shape, device=items.device) >= self.config.item_id_dropout)
        return F.normalize(text + self._id_vectors(index) * known.unsqueeze(-1), dim=-1)

    def _id_vectors(self, index: torch.Tensor) -> torch.Tensor:
        vectors = self.item_ids(index).float()
        cap = self.config.item_id_max_norm
        if cap is None:
            return vectors
        return vectors * (cap / vectors.norm(dim=-1, keepdim=True).clamp(min=cap)).clamp(max=1.0)

    def encode_items(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     items: torch.Tensor | None = None) -> torch.Tensor:
        """Item texts (M, T) [+ item indices (M,)] -> (M, D) item vectors."""
        return self.add_item_ids(self.encode_item_text(input_ids, attention_mask), items)

    def encode_user_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """User texts (B, T) -> (B, D)."""
        return self._encode("user", attention_mask, input_ids=input_ids)

    def encode_users(self, batch: dict[str, torch.Tensor], item_text: torch.Tensor | None,
                     every_position: bool = False) -> torch.Tensor:
        """(B, D) user vectors from a user-tower input batch; history items' text vectors come from ``item_text``.

        With ``every_position``, item-vector users give (B, 1 + L, D): see ``encode_user_history``. The mode
        (``recsys_tt.data.user_inputs``) decides which inputs the batch holds.
        """
        if not self.user_input.reads_item_vectors:
            return self.encode_user_text(batch["user_input_ids"], batch["user_attention_mask"])
        history = self.add_item_ids(item_text[batch["history"]], batch["history"])  # (B, L, D)
        return self.encode_user_history(batch["prefix_ids"], batch["prefix_mask"], history, batch["history_mask"],
                                        every_position=every_position)

    def encode_user_history(self, prefix_ids: torch.Tensor, prefix_mask: torch.Tensor, history: torch.Tensor,
                            history_mask: torch.Tensor, every_position: bool = False) -> torch.Tensor:
        """Profile prefix tokens (B, P) + history item vectors (B, L, D), oldest first -> user vectors.

        Attention is causal, so the state at history position j has seen the prefix and items 0..j only: one
        pass yields the user after every prefix of the history, which trains on every next item at once. With
        ``every_position``: (B, 1 + L, D), the user after the profile alone (as a new user with no items is
        served), then after each history item. Otherwise (B, D): the user after the whole history.
        """
        self._activate("user")
        words = self.encoder.get_input_embeddings()(prefix_ids)  # (B, P, H)
        items = self.history_in(history.to(self.history_in.weight.dtype)).to(words.dtype)  # (B, L, H)
        mask = torch.cat([prefix_mask, history_mask.to(prefix_mask.dtype)], dim=1)  # (B, T)
        attention = attention_mask(mask, self.encoder.config._attn_implementation, words.dtype, causal=True)
        positions = {"position_ids": (mask.cumsum(1) - 1).clamp(min=0)} if self._takes_positions else {}
        with (attention_kernels(words.device, self.config.gradient_checkpointing),
              first_blocks(self._blocks, self.config.user_layers)):
            hidden = self.encoder(inputs_embeds=torch.cat([words, items], dim=1), attention_mask=attention,
                                  **positions)
        pooled = running_pool(hidden.last_hidden_state, mask, self.config.pooling_of("user"))
        states = F.normalize(self.heads["user"](pooled).float(), dim=-1)  # (B, T, D)
        if not every_position:
            return pool(states, mask, "last")
        profile_end = (prefix_mask.sum(1) - 1).clamp(min=0)  # the last real profile token, whatever the padding
        profile_only = states[torch.arange(len(states), device=states.device), profile_end]
        return torch.cat([profile_only.unsqueeze(1), states[:, prefix_ids.shape[1]:]], dim=1)


