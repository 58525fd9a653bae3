"""User and item towers: one frozen transformers backbone, LoRA adapters (peft), pooling, projection, L2 norm.

Items are encoded from text, plus an optional learned id vector for items seen in training (unseen items
fall back to text alone, so cold start keeps working). Users are encoded either from text, or from the
sequence of their history items' vectors fed to the backbone as input embeddings after a short profile-text
prefix (HLLM-style): one position per item, far cheaper than spelling every title out.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from recsys_tt.backbone import DEFAULT_BACKBONE
from recsys_tt.text import trim
from recsys_tt.user_inputs import user_input_mode

log = logging.getLogger(__name__)

_LORA_TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "gpt2": ["c_attn"],
}
_DECODER_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


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
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")

    def pooling_of(self, tower: str) -> str:
        return (self.user_pooling or self.pooling) if tower == "user" else self.pooling


def default_lora_targets(model: nn.Module) -> list[str] | str:
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if model_type in _LORA_TARGETS:
        return _LORA_TARGETS[model_type]
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if {"q_proj", "v_proj"} <= names:
        return [t for t in _DECODER_TARGETS if t in names]
    return "all-linear"


def enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing, through the API transformers keeps from v6 on where it has it."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, H), (B, T) -> (B, H)."""
    if how == "cls":
        return hidden[:, 0]
    if how == "last":  # index of the last non-pad position, whatever the padding side
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = (positions * mask).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def disable_dropout(model: nn.Module) -> None:
    """Sets every dropout layer of ``model`` to p = 0 (attention dropout included: transformers reads its rate)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def length_groups(mask: torch.Tensor, rows: int | None) -> list[torch.Tensor]:
    """Row indices of a (B, T) padding mask grouped by similar length, ``rows`` per group (one group if None)."""
    if rows is None or len(mask) <= rows:
        return [torch.arange(len(mask), device=mask.device)]
    return list(torch.argsort(mask.sum(1), descending=True, stable=True).split(rows))


def bound_kernel_cache(capacity: int = 64) -> None:
    """Caps oneDNN's cache of compiled CPU kernels, unless ONEDNN_PRIMITIVE_CACHE_CAPACITY is set already.

    bf16 matmuls compile a kernel per input shape, and ours vary every step (window lengths, target counts): with
    the default 1,024 entries an ML-1M run grew by 10 MB a step, to 9.6 GB. 64 entries hold the memory flat at the
    speed of the full cache; 0 is 50% slower. oneDNN reads the variable once, at its first kernel.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(capacity))


def attention_kernels(device: torch.device, checkpointed: bool):
    """SDPA's math kernel when training on CPU: the fused CPU kernel's backward is several times slower (profiled,
    bf16); its forward is faster, so inference keeps it. Not under gradient checkpointing, whose recomputation runs
    outside this context and must pick the same kernel as the forward pass."""
    training_on_cpu = device.type == "cpu" and torch.is_grad_enabled() and not checkpointed
    return sdpa_kernel(SDPBackend.MATH) if training_on_cpu else contextlib.nullcontext()


def block_list(model: nn.Module) -> tuple[nn.Module, str]:
    """The module that holds a backbone's transformer blocks, and its attribute (BERT: encoder.layer, Llama: layers)."""
    count = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            parent, _, attribute = name.rpartition(".")
            return model.get_submodule(parent), attribute
    raise ValueError(f"Found no list of {count} blocks in {type(model).__name__}; user_layers needs one.")


@contextlib.contextmanager
def first_blocks(holder: tuple[nn.Module, str] | None, count: int | None):
    """Runs a model through its first ``count`` blocks only: the block list ``holder`` names (see ``block_list``) is
    cut for the call; None keeps every block."""
    if holder is None:
        yield
        return
    parent, attribute = holder
    blocks = getattr(parent, attribute)
    setattr(parent, attribute, blocks[:count])
    try:
        yield
    finally:
        setattr(parent, attribute, blocks)


def running_pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, H) -> (B, T, H): position t pooled over positions <= t (mean) or itself (last)."""
    if how == "last":
        return hidden
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).cumsum(1) / weights.cumsum(1).clamp(min=1.0)


def attention_mask(mask: torch.Tensor, attn_implementation: str, dtype: torch.dtype, causal: bool) -> torch.Tensor:
    """(B, T) padding mask -> a 4D mask in the form the attention implementation expects: (B, 1, T, T) causal, or
    (B, 1, 1, T) over the keys. transformers takes a 4D mask as it is; from a 2D one it first asks whether any
    token is padding, which makes the host wait for the device at every forward pass."""
    allowed = mask.bool()[:, None, None, :]
    if causal:
        length = mask.shape[1]
        allowed = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril() & allowed
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)
    if attn_implementation != "sdpa":
        raise ValueError(f"The towers pass a 4D attention mask, which {attn_implementation!r} attention does not "
                         "take; load the backbone with sdpa or eager attention.")
    return allowed


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
        self._adapter_params = [p for n, p in self.encoder.named_parameters() if "lora_" in n]
        self._causal = any(getattr(m, "is_causal", False) for m in backbone.modules())  # a decoder's text attention
        self._blocks = block_list(self.encoder) if config.user_layers is not None else None  # found once
        self.heads = nn.ModuleDict({t: self._head(hidden) for t in ("item", "user")})
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

    def _head(self, hidden: int) -> nn.Module:
        return nn.Linear(hidden, self.config.projection_dim) if self.config.projection_dim else nn.Identity()

    def _activate(self, tower: str) -> None:
        name = "shared" if self.config.shared_adapter else tower
        if self.encoder.active_adapter != name:
            self.encoder.set_adapter(name)
            self._train_all_adapters()

    def _train_all_adapters(self) -> None:
        # peft freezes inactive adapters (on add and on switch); both towers train in every step.
        for p in self._adapter_params:
            p.requires_grad_(True)

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

    def add_item_ids(self, text: torch.Tensor, items: torch.Tensor | None) -> torch.Tensor:
        """Text vectors (..., D) of items (...) -> item vectors: + id vector where the item was seen in training.

        Indices >= num_items (items added after training) and unseen items keep their text vector.
        """
        if not self.config.item_id_embeddings or items is None:
            return text
        index = items.clamp(max=self.num_items - 1)
        known = (items < self.num_items) & self.seen_items[index]
        return F.normalize(text + self.item_ids(index).float() * known.unsqueeze(-1), dim=-1)

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
        (``recsys_tt.user_inputs``) decides how the batch is read.
        """
        return self.user_input.encode(self, batch, item_text, every_position)

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


def is_base_weight(key: str) -> bool:
    """True for state-dict keys of the frozen backbone, which checkpoints leave out (they come from `backbone`)."""
    return key.removeprefix("model.").startswith("encoder.") and "lora_" not in key


def sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of a state dict under ``prefix``, keyed without it (a LightningModule's ``model.*``: its towers)."""
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def load_trainable(model: TwoTower, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Loads trained weights (adapters, heads, id vectors; keys as in ``model.state_dict()``) onto a TwoTower whose
    frozen base came from its backbone."""
    backbone = model.config.backbone
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"{source} does not fit backbone {backbone!r} (shapes differ): was it trained with "
                         f"another backbone or projection?\n{err}") from err
    missing = [k for k in missing if not is_base_weight(k)]
    if missing or unexpected:
        raise ValueError(f"{source} does not match the model built for backbone {backbone!r}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}.")
