"""Encoding with a trained TwoTower outside the training step: catalog text, added items, users.

Evaluation, export, offline scoring, catalog growth and serving all encode through ``Encoder`` (eval mode, no
gradients, the precision the model was evaluated in), so their vectors agree. It needs no training code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from recsys_tt.data.text import trim
from recsys_tt.model.towers import TwoTower

_AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision string ("bf16-mixed" -> bfloat16; "32-true" -> None)."""
    return _AUTOCAST.get(str(precision))


def lightning_precision(dtype: torch.dtype | None) -> str:
    """The Lightning precision string that autocasts to ``dtype`` (None -> "32-true")."""
    return next((name for name, value in _AUTOCAST.items() if value == dtype), "32-true")


def dtype_name(dtype: torch.dtype | None) -> str:
    """How export metadata names an autocast dtype: "bfloat16", "float16", or "float32" for none."""
    return str(dtype or torch.float32).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype | None:
    """The inverse of ``dtype_name``."""
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"Unknown precision {name!r}; expected float32, bfloat16 or float16.")
    return None if name == "float32" else getattr(torch, name)


@dataclass
class Encoder:
    """A TwoTower, its catalog's tokenised item texts and the autocast dtype its vectors are computed in."""

    model: TwoTower
    item_tokens: dict[str, torch.Tensor] | None  # (N, T) input_ids / attention_mask of the catalog, where needed
    precision: torch.dtype | None = None
    chunk_size: int = 512  # items per forward pass

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        autocast = (torch.autocast(self.device.type, dtype=self.precision) if self.precision is not None
                    else contextlib.nullcontext())
        try:
            with torch.no_grad(), autocast:
                yield
        finally:
            self.model.train(was_training)

    def item_text(self, tokens: dict[str, torch.Tensor] | None = None, progress: bool = False) -> torch.Tensor:
        """(M, D) text vectors (before id vectors) of tokenised items; by default the whole catalog.

        ``progress`` shows a progress bar (for jobs outside a Lightning loop, which has its own).
        """
        tokens = self.item_tokens if tokens is None else tokens
        if tokens is None:
            raise ValueError("This encoder holds no catalog tokens; pass the items' tokens.")
        chunks = []
        with self._inference():
            starts = range(0, len(tokens["input_ids"]), self.chunk_size)
            for start in tqdm(starts, desc="encoding items", unit="chunk", disable=not progress, leave=False):
                part = trim({k: v[start: start + self.chunk_size] for k, v in tokens.items()})
                chunks.append(self.model.encode_item_text(**{k: v.to(self.device) for k, v in part.items()}))
        return torch.cat(chunks) if chunks else torch.zeros(0, self.model.dim, device=self.device)

    def catalog_tensors(self, text: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(text vectors, item vectors) of the whole catalog, (N, D) each, on the model's device; items without a
        trained id vector are placed by ``TwoTower.catalog_item_vectors``. ``text``: the catalog's text vectors where
        they are already encoded."""
        text = self.item_text() if text is None else text
        with torch.no_grad():
            return text, self.model.catalog_item_vectors(text)

    def catalog(self) -> tuple[np.ndarray, np.ndarray]:
        """``catalog_tensors`` as float32 arrays."""
        text, items = self.catalog_tensors()
        return text.float().cpu().numpy(), items.float().cpu().numpy()

    def users(self, batches: Iterable[dict[str, torch.Tensor]], text_vectors: np.ndarray) -> np.ndarray:
        """(U, D) user vectors from user-tower input batches; history items' text vectors from ``text_vectors``."""
        text, out = torch.from_numpy(text_vectors).to(self.device), []
        with self._inference():
            for batch in batches:
                batch = {name: values.to(self.device) for name, values in batch.items()}
                out.append(self.model.encode_users(batch, text).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.dim), dtype=np.float32)
