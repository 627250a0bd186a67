"""What every scoring backend shares: the per-text result and the tokenisation, so HF and vLLM
score exactly the same token ids and feed the same score functions (scanner.scoring.stats)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Capabilities:
    """What a scorer can give besides token log-probs; callers ask this, never the backend's name."""

    vocab_stats: bool  # mean/std of log p under the model's next-token distribution (Min-K%++), top-1 log p (Gap-K%)
    hidden_states: bool  # a text embedding from the model itself (else the features need an embedder)


@dataclass
class TextScore:
    token_logprobs: np.ndarray  # (n_scored,) log p(token_t | tokens < t)
    mu: np.ndarray | None  # (n_scored,) E_z~p[log p(z)] per position; None when the backend cannot give it
    sigma: np.ndarray | None  # (n_scored,) std of log p(z) under p; None likewise
    top1_logprobs: np.ndarray | None  # (n_scored,) max_z log p(z) per position; None likewise
    embedding: np.ndarray | None  # (dim,) text embedding; None when no embedder is available
    n_tokens: int  # tokens fed to the model (after truncation, with the prefix token)
    truncated: bool


class TextTokenizer:
    """Token ids as scored: every token of the text is scored, so a BOS (else EOS) token is put
    in front when the tokenizer does not add one itself; longer texts are cut to `max_length`
    and flagged as truncated."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        # padding is masked everywhere, so any id does; the tokenizer's own when it has one
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.prefix_id or 0)

    def _uncut(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids with the prefix token in front, not cut to the window."""
        enc = self.tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
        return [[self.prefix_id] + row if self.prefix_id is not None and (not row or row[0] != self.prefix_id) else row
                for row in enc]

    def whole(self, text: str) -> list[int]:
        """A text's token ids, not cut to the window (a prefix: its end is kept, by with_prefix)."""
        return self._uncut([text])[0]

    def __call__(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        ids, truncated = [], []
        for row in self._uncut(texts):
            truncated.append(len(row) > self.max_length)
            ids.append(row[: self.max_length])
        return ids, truncated


def with_prefix(prefix: list[int], row: list[int], max_length: int) -> list[int]:
    """A text's token ids with a prefix's in front, as much of the prefix's end as the window
    leaves room for (none when the text fills it: then the text is scored as alone)."""
    room = max(0, max_length - len(row))
    return prefix[max(0, len(prefix) - room):] + row


class Scorer(Protocol):
    """A text scorer; an image-text scorer (options.Backend.image_text: the config refuses it a
    scan without --image-col) gives score_pairs(texts, images) instead of score_texts."""

    capabilities: Capabilities
    device: str  # where it computes: "cpu", "cuda", "mps"
    hidden_size: int | None  # width of its embeddings; None without hidden states

    def score_texts(self, texts: list[str], batch_tokens: int | None = None) -> list[TextScore]: ...

    def score_token_ids(self, ids: list[list[int]], truncated: list[bool], batch_tokens: int | None = None
                        ) -> list[TextScore]: ...
