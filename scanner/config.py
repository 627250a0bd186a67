"""One typed config for a scan, from a YAML/TOML file plus command-line overrides. The resolved
config is echoed into the run's manifest, and its hash guards resumes."""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from scanner.errors import InputError
from scanner.neighbors import DEFAULT_KINDS, NeighborConfig


BACKENDS = ("hf", "vllm")


@dataclass
class ScanConfig:
    model: str = ""
    backend: str = "hf"  # "vllm" needs the extra scanner[vllm] and a GPU; it has no Min-K%++
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: str | None = None  # default: bfloat16 on GPU, float32 on CPU
    device: str | None = None  # default: cuda when the actor has a GPU
    max_length: int | None = None  # default: the model's window
    neighbors: int = 24
    neighbor_kinds: list[str] = field(default_factory=lambda: list(DEFAULT_KINDS))
    change_fraction: float = 0.1
    min_changes: int = 1
    max_changes: int = 20
    seed: int = 0
    batch_tokens: int | None = None  # padded tokens per forward pass; default 16384 on GPU, 1024 on CPU
    mlm_model: str | None = None  # fill-mask model (hub id or path), needed by the "mlm" neighbor kind
    embedder: str | None = None  # separate sentence embedder (hub id or path); default: the target's hidden state
    proj_dim: int = 8  # random projection of the embedding difference per neighbor (0: off)
    # vLLM engine (backend: vllm); see scanner.scoring.vllm.EngineOptions
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    shard_size: int = 1000  # samples per resumable shard
    actors: int = 1
    gpus_per_actor: float | None = None  # default: 1 when the cluster has GPUs, else 0
    cpus_per_actor: float = 1.0
    actor_start_timeout: int = 1800  # seconds for the whole actor pool to load its models before any work
    samples_per_call: int = 16  # samples (each with its neighbors) per actor call
    text_col: str | None = None
    label_col: str = "label"
    id_col: str | None = None
    source_col: str | None = None

    def neighbor_config(self) -> NeighborConfig:
        return NeighborConfig(k=self.neighbors, kinds=tuple(self.neighbor_kinds), fraction=self.change_fraction,
                              min_changes=self.min_changes, max_changes=self.max_changes, seed=self.seed)

    def engine_options(self):
        from scanner.scoring.vllm import EngineOptions

        return EngineOptions(max_num_batched_tokens=self.max_num_batched_tokens,
                             gpu_memory_utilization=self.gpu_memory_utilization,
                             max_model_len=self.max_model_len, tensor_parallel_size=self.tensor_parallel_size)

    def validate(self) -> "ScanConfig":
        if not self.model:
            raise InputError("no model: pass --model ID_OR_PATH or set `model` in the config file")
        for name in ("neighbors", "batch_tokens", "shard_size", "actors", "samples_per_call"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "neighbors" else 1):
                raise InputError(f"config {name} = {value} is out of range")
        if self.backend not in BACKENDS:
            raise InputError(f"backend {self.backend!r} is not one of {BACKENDS}")
        if self.backend == "vllm":
            from scanner.scoring.vllm import import_vllm

            self.engine_options().validate()
            import_vllm()  # fail here, with the extra's name, not in a remote actor
        if "mlm" in self.neighbor_kinds and not self.mlm_model:
            raise InputError('the "mlm" neighbor kind needs a fill-mask model: set mlm_model (e.g. a BERT path)')
        try:
            self.neighbor_config()
        except ValueError as e:
            raise InputError(str(e)) from None
        return self

    def feature_settings(self) -> dict:
        """The options that decide a text's features, but the model: a detector only applies to
        features computed with the settings it was trained on."""
        keep = ("backend", "max_length", "neighbors", "neighbor_kinds", "change_fraction", "min_changes",
                "max_changes", "seed", "mlm_model", "embedder", "proj_dim")
        return {k: getattr(self, k) for k in keep}

    def scoring_hash(self) -> str:
        """What decides the features: a resumed run must match it. Scheduling knobs are left out."""
        keep = {k: v for k, v in asdict(self).items()
                if k not in ("actors", "gpus_per_actor", "cpus_per_actor", "actor_start_timeout", "samples_per_call", "batch_tokens", "device",
                             "max_num_batched_tokens", "gpu_memory_utilization")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def read_config_file(path: str | None, extra: tuple[str, ...] = ()) -> dict:
    """The options in a YAML/TOML file, checked against ScanConfig's fields and `extra` (the keys
    of a command that reads more than scan options from the same file)."""
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{path}: no such config file")
        text = p.read_text()
        try:
            data = tomllib.loads(text) if p.suffix == ".toml" else (yaml.safe_load(text) or {})
        except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
            raise InputError(f"{path}: not valid {'TOML' if p.suffix == '.toml' else 'YAML'}: {e}") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a mapping of option: value")
    known = {f.name for f in fields(ScanConfig)} | set(extra)
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{path}: unknown options {unknown}; known: {sorted(known)}")
    return data


def load_config(path: str | None, overrides: dict, base: dict | None = None) -> ScanConfig:
    """base (e.g. what a detector was trained with) < the config file < command-line overrides."""
    data = dict(base or {}) | read_config_file(path) | {k: v for k, v in overrides.items() if v is not None}
    return ScanConfig(**data).validate()
