"""Scoring options that the config validates without importing any backend."""

from __future__ import annotations

from dataclasses import dataclass

from scanner.errors import InputError

BACKENDS = ("hf", "vllm", "vlm")


@dataclass
class EngineOptions:
    """vLLM engine settings exposed in the scan config, with safe defaults."""

    max_num_batched_tokens: int | None = None  # vLLM's default
    gpu_memory_utilization: float = 0.85  # leaves room for an embedder beside the engine
    max_model_len: int | None = None  # default: the model's window
    tensor_parallel_size: int = 1  # > 1: the actor must hold that many GPUs on one node

    def validate(self) -> "EngineOptions":
        if not 0.05 <= self.gpu_memory_utilization <= 0.98:
            raise InputError(f"gpu_memory_utilization = {self.gpu_memory_utilization} is outside [0.05, 0.98]")
        if self.tensor_parallel_size < 1:
            raise InputError("tensor_parallel_size must be at least 1")
        for name in ("max_num_batched_tokens", "max_model_len"):
            if getattr(self, name) is not None and getattr(self, name) < 16:
                raise InputError(f"{name} = {getattr(self, name)} is too small")
        return self
