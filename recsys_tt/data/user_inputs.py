"""How users enter the user tower: as text, or as their history items' vectors after a profile prefix.

``model.tower.user_input`` names the mode once; ``user_input_mode`` turns the name into one of the objects below,
which training data (examples and targets), the towers (which inputs they read) and serving (inputs of known and new
users) ask instead of comparing strings. Encoding the inputs is the towers' (``TwoTower.encode_users``).
``UserFeatures`` holds what either mode needs to build a user's input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from recsys_tt.data.examples import pad_rows, training_examples, training_windows
from recsys_tt.data.text import TextTemplates, tokenize, tokenize_table, trim, user_text


class TextUsers:
    """A user is a text: the profile plus the names of their recent items; one target per (user, position)."""

    name = "text"
    reads_item_vectors = False  # never reads the catalog's text vectors

    def training_examples(self, train: Sequence[np.ndarray], history_len: int, min_history: int) -> np.ndarray:
        """(E, 2) examples (user, position)."""
        return training_examples(train, min_history)

    def training_targets(self, train: Sequence[np.ndarray],
                         examples: np.ndarray) -> tuple[list[np.ndarray], torch.Tensor]:
        """Each example's history and its target item (B,)."""
        return [train[u][:t] for u, t in examples], torch.as_tensor([train[u][t] for u, t in examples])

    def click_targets(self, histories: Sequence[np.ndarray], columns: torch.Tensor, history_len: int) -> torch.Tensor:
        """The target column of each logged click (B,): one per user, after their whole history."""
        return columns

    def inputs(self, features: UserFeatures, profiles: list[str], prefix: dict[str, torch.Tensor],
               recent: list[np.ndarray]) -> dict[str, torch.Tensor]:
        names = features.history_names
        texts = [user_text(p, [names[i] for i in h], features.templates) for p, h in zip(profiles, recent)]
        tokens = tokenize(features.tokenizer, texts, features.max_user_tokens)
        return {"user_input_ids": tokens["input_ids"], "user_attention_mask": tokens["attention_mask"]}



class ItemVectorUsers:
    """A user is a profile-text prefix followed by their history items' vectors; one causal pass over a window of
    up to ``history_len`` items trains on every next item in it."""

    name = "item_vectors"
    reads_item_vectors = True  # history inputs are the catalog's (cached) text vectors

    def training_examples(self, train: Sequence[np.ndarray], history_len: int, min_history: int) -> np.ndarray:
        """(E, 3) windows (user, start, end)."""
        return training_windows(train, history_len, min_history)

    def training_targets(self, train: Sequence[np.ndarray],
                         examples: np.ndarray) -> tuple[list[np.ndarray], torch.Tensor]:
        """Each window's items and its targets (B, 1 + L), -1 padded: column 0 the target of the profile alone
        (only in a window starting at -1), then the target after each history item."""
        histories = [train[u][max(a, 0):b] for u, a, b in examples]
        from_profile = torch.as_tensor([[train[u][0] if a < 0 else -1] for u, a, _ in examples])
        later = pad_rows([train[u][max(a, 0) + 1: b + 1] for u, a, b in examples])
        return histories, torch.cat([from_profile, later], 1)

    def click_targets(self, histories: Sequence[np.ndarray], columns: torch.Tensor, history_len: int) -> torch.Tensor:
        """(B, 1 + L) -1 padded, aligned with the user tower's states: each logged click is the target after the
        last of the (at most ``history_len``) history items the tower reads."""
        read = torch.as_tensor([min(len(h), history_len) for h in histories])
        out = torch.full((len(histories), 1 + max(int(read.max()), 1)), -1, dtype=torch.long)
        out[torch.arange(len(histories)), read] = columns
        return out

    def inputs(self, features: UserFeatures, profiles: list[str], prefix: dict[str, torch.Tensor],
               recent: list[np.ndarray]) -> dict[str, torch.Tensor]:
        history = pad_rows(recent)
        return {"prefix_ids": prefix["input_ids"], "prefix_mask": prefix["attention_mask"],
                "history": history.clamp(min=0), "history_mask": (history >= 0).long()}



UserInput = TextUsers | ItemVectorUsers
_MODES = {mode.name: mode for mode in (TextUsers(), ItemVectorUsers())}


def user_input_mode(name: str) -> UserInput:
    """The mode object of a ``model.tower.user_input`` name."""
    if name not in _MODES:
        raise ValueError(f"user_input must be one of {sorted(_MODES)}, got {name!r}.")
    return _MODES[name]


@dataclass
class UserFeatures:
    """What the user tower needs to build its input, for known users and for new users given as text."""

    mode: UserInput
    profile_texts: list[str]  # user index -> profile text ("" without a users table)
    profile_tokens: dict[str, torch.Tensor]  # (U, P) tokenised profiles, the prefix of item-vector users
    history_names: list[str]  # item index -> how the item is named in user text
    templates: TextTemplates
    tokenizer: object
    history_len: int
    max_user_tokens: int
    max_profile_tokens: int

    @classmethod
    def build(cls, mode: UserInput, profiles: list[str], history_names: list[str], templates: TextTemplates,
              tokenizer, history_len: int, max_user_tokens: int, max_profile_tokens: int) -> UserFeatures:
        return cls(mode, profiles, tokenize_table(tokenizer, profiles, max_profile_tokens), history_names,
                   templates, tokenizer, history_len, max_user_tokens, max_profile_tokens)

    def batch(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """Inputs of the user tower for known users (B,) whose histories (oldest first) are given."""
        prefix = trim({k: v[torch.as_tensor(users)] for k, v in self.profile_tokens.items()})
        return self._inputs([self.profile_texts[u] for u in users], prefix, histories)

    def batch_from_text(self, profiles: list[str], histories: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        """Inputs for users known only by free text and/or recent items (cold start)."""
        return self._inputs(profiles, tokenize(self.tokenizer, profiles, self.max_profile_tokens), histories)

    def _inputs(self, profiles: list[str], prefix: dict[str, torch.Tensor],
                histories: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        recent = [np.asarray(h, dtype=np.int64)[-self.history_len:] for h in histories]
        return self.mode.inputs(self, profiles, prefix, recent)
