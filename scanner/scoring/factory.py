"""The configured scorer, and the checks that can fail before any actor starts."""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path

from scanner.errors import InputError
from scanner.scoring.interface import Scorer
from scanner.scoring.options import BACKENDS
from scanner.storage import Store, is_uri, local_folder


def check_adapter_servable(cfg, instead: str) -> None:
    """Refuses in one line, before any work, a model whose adapter the backend cannot serve (vLLM
    takes LoRA for some architectures only; the others merge it)."""
    if cfg.backend == "vllm":
        from scanner.scoring.vllm import check_lora_servable

        check_lora_servable(local_model(cfg.model), cfg.revision, cfg.trust_remote_code, instead=instead)


def local_model(name: str | None) -> str | None:
    """A model or adapter as from_pretrained takes it: a hub id or local path as it is, a folder at
    a URI (a fine-tune `scanner calibrate` wrote to an object store) copied to this node once."""
    return local_folder(name) if name and is_uri(name) else name


def _check_folder(name: str, marker: str, what: str) -> None:
    if not Store(name, create=False).exists(marker):
        raise InputError(f"cannot load {name}: no {marker} in it (not a {what} folder)")


def looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().exists()


def check_model_path(model: str) -> None:
    """A local model folder that cannot be a checkpoint is refused at once; hub ids and
    unloadable checkpoints are caught when the scoring actors load them."""
    if is_uri(model):
        return _check_folder(model, "config.json", "Hugging Face checkpoint")
    if not looks_like_path(model):
        return
    path = Path(model).expanduser()
    if not path.is_dir():
        raise InputError(f"cannot load model {model}: no such folder")
    if not (path / "config.json").is_file():
        raise InputError(f"cannot load model {model}: no config.json in it (not a Hugging Face checkpoint folder)")


def check_adapter_path(adapter: str | None) -> None:
    if adapter and is_uri(adapter):
        return _check_folder(adapter, "adapter_config.json", "peft adapter")
    if adapter and not (Path(adapter).expanduser() / "adapter_config.json").is_file():
        raise InputError(f"cannot load adapter {adapter}: no adapter_config.json in it (not a peft adapter folder)")


def scorer_key(cfg) -> tuple:
    """Everything make_scorer reads: two configs with the same key load the same scorer."""
    return (cfg.backend, cfg.model, cfg.revision, cfg.adapter, cfg.device, cfg.dtype, cfg.trust_remote_code,
            cfg.max_length, engine_options(cfg) if BACKENDS[cfg.backend].engine else None)


def engine_options(cfg):
    """The engine's options; beside a reference model's engine (the actor holds both), half the
    accelerator's memory: the configured share is the two engines' together."""
    options = cfg.engine_options()
    if not cfg.reference_model:
        return options
    return replace(options, gpu_memory_utilization=options.gpu_memory_utilization / 2,
                   kv_cache_gib=options.kv_cache_gib and options.kv_cache_gib / 2)


def reference_config(cfg):
    """The settings the scan's reference model is loaded with: the target's backend, device and
    window, no adapter, and the other half of an engine backend's memory."""
    share = engine_options(cfg)
    return replace(cfg, model=cfg.reference_model, revision=None, adapter=None, reference_model=None,
                   gpu_memory_utilization=share.gpu_memory_utilization, kv_cache_gib=share.kv_cache_gib)


def make_scorer(cfg) -> Scorer:
    """The configured backend (options.BACKENDS). hf and vllm return the same TextScores for the
    same token ids; vlm scores image-text pairs (score_pairs) into the same TextScores."""
    backend = BACKENDS[cfg.backend]
    module, name = backend.scorer.split(":")
    scorer_class = getattr(importlib.import_module(module), name)
    placement = {"engine": engine_options(cfg)} if backend.engine else {"device": cfg.device}
    return scorer_class(local_model(cfg.model), revision=cfg.revision, dtype=cfg.dtype,
                        trust_remote_code=cfg.trust_remote_code, max_length=cfg.max_length,
                        adapter=local_model(cfg.adapter), **placement)
