"""vLLM backend (optional extra: pip install 'scanner[vllm]').

One `vllm.LLM` per Ray actor scores token-id prompts made by the same TextTokenizer as the HF
backend, with SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, temperature=0):
vLLM then returns, per prompt position, the log-prob of the actual token (the first position has
None: nothing precedes it). Those become the same per-text arrays the HF backend produces, so
LOSS, zlib, Min-K% and the neighbor features come from the same code.

What it cannot give: vLLM returns only top-k log-probs, not the whole next-token distribution,
so Min-K%++ (which needs its mean and std) is unavailable: mu/sigma are None and the
min_k_pp_* columns are null (the manifest says so). Nor does it return hidden states: the
embedding features need a separate `embedder` (a sentence-embedding model, loaded beside the
engine: budget its memory, a MiniLM takes ~0.1 GB, when setting gpu_memory_utilization);
without one they are null.
"""

from __future__ import annotations

import numpy as np

from scanner.errors import InputError
from scanner.scoring.interface import Capabilities, TextScore, TextTokenizer
from scanner.scoring.options import EngineOptions


def import_vllm():
    try:
        import vllm
    except ImportError:
        raise InputError("the vllm backend needs the optional extra: pip install 'scanner[vllm]'") from None
    return vllm


def _logprob_value(entry) -> float:
    """A vLLM Logprob object (has .logprob) or a plain float."""
    return float(getattr(entry, "logprob", entry))


def prompt_token_logprobs(prompt_ids: list[int], prompt_logprobs) -> np.ndarray:
    """Per-position {token_id: Logprob} (a list, or vLLM's flat container, which reads the same
    way by position) -> log-probs of the actual tokens 1..n-1. Position 0 is None in vLLM's
    output and is skipped; any later position without the actual token is an error, never a
    silent zero."""
    if prompt_logprobs is None:
        raise ValueError("vLLM returned no prompt log-probs: was prompt_logprobs set?")
    if len(prompt_logprobs) != len(prompt_ids):
        raise ValueError(f"vLLM returned {len(prompt_logprobs)} positions for a {len(prompt_ids)}-token prompt")
    out = np.empty(len(prompt_ids) - 1)
    for t in range(1, len(prompt_ids)):
        position = prompt_logprobs[t]
        if position is None or prompt_ids[t] not in position:
            raise ValueError(f"vLLM gave no log-prob for the actual token at position {t}")
        out[t - 1] = _logprob_value(position[prompt_ids[t]])
    return out


def to_text_scores(ids: list[list[int]], truncated: list[bool], outputs, embeddings=None) -> list[TextScore]:
    """vLLM RequestOutputs (in prompt order) -> TextScores, Min-K%++ statistics absent."""
    if len(outputs) != len(ids):
        raise ValueError(f"{len(outputs)} vLLM outputs for {len(ids)} prompts")
    scores = []
    for k, (row, tr, out) in enumerate(zip(ids, truncated, outputs)):
        emb = None if embeddings is None else embeddings[k]
        scores.append(TextScore(prompt_token_logprobs(row, out.prompt_logprobs), None, None, emb, len(row), tr))
    return scores


def sampling_params(vllm):
    """Prompt log-probs of the actual tokens only; the flat container (fewer Python objects per
    token) where the installed vLLM has it; both read the same way by position."""
    kwargs = dict(max_tokens=1, prompt_logprobs=0, detokenize=False, temperature=0.0)
    try:
        return vllm.SamplingParams(**kwargs, flat_logprobs=True)
    except TypeError:
        return vllm.SamplingParams(**kwargs)


class VLLMScorer:
    capabilities = Capabilities(vocab_stats=False, hidden_states=False)
    hidden_size = None

    def __init__(self, model: str, revision: str | None = None, dtype: str | None = None,
                 trust_remote_code: bool = False, max_length: int | None = None,
                 engine: EngineOptions = EngineOptions()):
        vllm = import_vllm()
        engine.validate()
        self.llm = vllm.LLM(model=model, revision=revision, dtype=dtype or "auto", trust_remote_code=trust_remote_code,
                            tensor_parallel_size=engine.tensor_parallel_size,
                            gpu_memory_utilization=engine.gpu_memory_utilization,
                            max_model_len=engine.max_model_len or max_length,
                            max_num_batched_tokens=engine.max_num_batched_tokens)
        window = self.llm.llm_engine.model_config.max_model_len
        self.tokenize = TextTokenizer(self.llm.get_tokenizer(), min(x for x in (max_length, window) if x))
        self.params = sampling_params(vllm)
        self.model_id, self.revision = model, revision or "default"

    def score_texts(self, texts: list[str], batch_tokens: int | None = None) -> list[TextScore]:
        """vLLM batches by itself (continuous batching): batch_tokens is not used here."""
        ids, truncated = self.tokenize(texts)
        prompts = [{"prompt_token_ids": row} for row in ids]
        outputs = self.llm.generate(prompts, self.params, use_tqdm=False)
        return to_text_scores(ids, truncated, outputs)
