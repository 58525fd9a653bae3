"""Turning a backbone's token states into vectors: pooling, running pooling over a history, the 4D attention masks the
towers pass, and grouping rows by length."""

from __future__ import annotations

import torch


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


def length_groups(mask: torch.Tensor, rows: int | None) -> list[torch.Tensor]:
    """Row indices of a (B, T) padding mask grouped by similar length, ``rows`` per group (one group if None)."""
    if rows is None or len(mask) <= rows:
        return [torch.arange(len(mask), device=mask.device)]
    return list(torch.argsort(mask.sum(1), descending=True, stable=True).split(rows))


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
