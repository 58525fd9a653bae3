"""FSDP wrapping for transformers backbones (used by configs/ml100k_qwen_fsdp.yaml)."""

from __future__ import annotations

from torch import nn


def transformer_blocks(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """FSDP auto-wrap policy: one shard unit per transformer block of any transformers model.

    transformers builds every encoder/decoder block on GradientCheckpointingLayer, so this needs no per-model
    class list; adapters inside a block share its unit (which is why the config sets use_orig_params).
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    return True if recurse else isinstance(module, GradientCheckpointingLayer)
