"""Hugging Face backend: token log-probs, Min-K%++ statistics and embeddings from one forward pass.

- Model and tokenizer come from a hub id or a local path (`from_pretrained`); `trust_remote_code`
  is off unless asked for. A peft adapter (LoRA) is merged into the weights once at load, so it
  costs nothing per token. Device and dtype are automatic: bf16 on a GPU, fp32 on the CPU.
- Tokens come from TextTokenizer (shared with the vLLM backend): every token of a text is
  scored, a BOS (or EOS) token in front. Texts longer than the model's window are truncated to
  it and flagged (`truncated`); windowed scoring would mix contexts across windows, truncation
  keeps each score a plain function of the text's first `max_length` tokens.
- Batches are built by a token budget over texts sorted by length (little padding); padding is
  on the right and masked, so no pad token reaches any score.
- The LM head runs over the real positions only, on slices of the vocabulary
  (scanner.scoring.vocab_stats): the actual token's log-prob and the mean/std of log p under the
  model's own distribution (for Min-K%++), never B x T x V logits at once, the head's weights
  read once per batch. The embedding is the masked mean of the last hidden state.
"""

from __future__ import annotations

import torch

from scanner.scoring.interface import Capabilities, TextScore, TextTokenizer
from scanner.scoring.vocab_stats import logits_statistics, per_text, row_statistics

# padded tokens per forward pass when not set: small CPU batches stay in cache (a 9M GPT-2 with a
# 16k vocabulary scored 5.9k tokens/s at 1024 vs 4.7k at 8192 on 2 cores); GPUs want big ones
DEFAULT_BATCH_TOKENS = {"cpu": 1024, "cuda": 16384}


def right_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows padded on the right to the longest one, and the mask of the real tokens."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def auto_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def auto_dtype(device: str) -> torch.dtype:
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def device_and_dtype(device: str | None, dtype: str | None) -> tuple[str, torch.dtype]:
    """The scorer's device and dtype as configured, else automatic (bf16 on a GPU, fp32 on the CPU)."""
    device = device or auto_device()
    return device, getattr(torch, dtype) if dtype else auto_dtype(device)


def split_head_matches(model, base, head, inputs: dict) -> bool:
    """Whether the base model's last hidden state through the LM head gives the model's own logits
    on `inputs` (some models scale or soft-cap logits inside forward, or their base takes other
    inputs): only then may a scorer run the head itself, in chunks over the positions it needs."""
    try:
        with torch.no_grad():
            full = model(**inputs).logits.float()
            split = head(base(**inputs).last_hidden_state).float()
    except (TypeError, ValueError, AttributeError):
        return False
    return full.shape == split.shape and bool(torch.allclose(full, split, atol=1e-3, rtol=1e-3))


def load_causal_lm(model: str, device: str, dtype: torch.dtype, revision: str | None = None,
                   trust_remote_code: bool = False, adapter: str | None = None, **model_options):
    """(tokenizer, model in eval mode on `device`) from a hub id or local path; a peft adapter
    (LoRA) is merged into the weights once here, so it costs nothing per token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code)
    return tokenizer, load_model(AutoModelForCausalLM, model, device, dtype, revision, trust_remote_code, adapter,
                                 **model_options)


def load_model(auto_class, model: str, device: str, dtype: torch.dtype, revision: str | None = None,
               trust_remote_code: bool = False, adapter: str | None = None, **model_options):
    """auto_class.from_pretrained(model) in eval mode on `device`, with the peft adapter merged."""
    lm = auto_class.from_pretrained(model, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code,
                                    **model_options).to(device).eval()
    if adapter:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, adapter).merge_and_unload().eval()
    return lm


class HFScorer:
    capabilities = Capabilities(vocab_stats=True, hidden_states=True)

    def __init__(self, model: str, revision: str | None = None, device: str | None = None,
                 dtype: str | None = None, trust_remote_code: bool = False, max_length: int | None = None,
                 adapter: str | None = None):
        self.device, self.dtype = device_and_dtype(device, dtype)
        self.tokenizer, self.model = load_causal_lm(model, self.device, self.dtype, revision, trust_remote_code, adapter)
        self.model_id = model
        self.revision = revision or getattr(self.model.config, "_commit_hash", None) or "local"
        window = getattr(self.model.config, "max_position_embeddings", None) or getattr(self.model.config, "n_positions", None)
        self.max_length = min(x for x in (max_length, window, 1 << 20) if x)
        self.tokenize = TextTokenizer(self.tokenizer, self.max_length)
        self.base = getattr(self.model, self.model.base_model_prefix)
        self.head = self.model.get_output_embeddings()
        ids = torch.tensor([[self.tokenize.prefix_id or 0, 1, 2, 3]], device=self.device)
        self.split_head = split_head_matches(self.model, self.base, self.head, {"input_ids": ids})
        self.positions = {"real": 0, "padded": 0}  # the forward passes' positions so far (the scan reports the share)

    # ------------------------------------------------------------ forward

    @torch.no_grad()
    def _score_batch(self, batch: list[list[int]]) -> list[tuple]:
        ids, mask = right_padded(batch, self.tokenize.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        scored = mask[:, 1:].bool()  # position t predicts token t + 1: the real ones, row by row
        targets = ids[:, 1:][scored]
        if self.split_head:
            hidden = self.base(input_ids=ids, attention_mask=mask).last_hidden_state
            stats = row_statistics(hidden[:, :-1][scored], targets, self.head)
        else:
            out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            hidden = out.hidden_states[-1]
            stats = logits_statistics(out.logits[:, :-1][scored], targets)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        emb = ((hidden * m).sum(1) / m.sum(1)).float().cpu().numpy()
        return [(*parts, e) for parts, e in zip(per_text(stats, [len(r) - 1 for r in batch]), emb)]

    def score_ids(self, ids: list[list[int]], batch_tokens: int | None = None) -> list[tuple]:
        """Sorted by length, cut into batches of at most `batch_tokens` padded tokens."""
        batch_tokens = batch_tokens or DEFAULT_BATCH_TOKENS["cuda" if self.device.startswith("cuda") else "cpu"]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        results: list = [None] * len(ids)
        start = 0
        while start < len(order):
            longest = len(ids[order[start]])
            size = max(1, batch_tokens // max(longest, 1))
            chunk = order[start : start + size]
            real = sum(len(ids[i]) for i in chunk)
            self.positions["real"] += real
            self.positions["padded"] += len(chunk) * longest - real
            for i, res in zip(chunk, self._score_batch([ids[i] for i in chunk])):
                results[i] = res
            start += size
        return results

    def score_texts(self, texts: list[str], batch_tokens: int | None = None) -> list[TextScore]:
        return self.score_token_ids(*self.tokenize(texts), batch_tokens=batch_tokens)

    def score_token_ids(self, ids: list[list[int]], truncated: list[bool], batch_tokens: int | None = None
                        ) -> list[TextScore]:
        """TextScores of token id rows as `tokenize` makes them (or with a prefix in front)."""
        return [TextScore(*res, len(r), tr) for res, r, tr in zip(self.score_ids(ids, batch_tokens), ids, truncated)]

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else self.model.config.n_embd)
