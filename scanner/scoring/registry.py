"""The membership scores, each registered once: its name (the feature column), its direction,
what it needs, its version and its function. Everything that lists scores reads them here: the
feature schema, the detectors' inputs, evaluate's families and rows, the reports, `scanner scores`
and the README's table (a test compares them).

A new attack is one module in scanner/scoring/scores/ that calls `register` (it is found there,
with no other edit), or a module of the user's own, named in the scan config's `score_modules`
so that every worker imports it too. A score's `version` is part of a run's identity: a run folder
never holds shards of two versions of a score.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

BUILT_IN = "scanner.scoring.scores"
# What a score may need: the text, its tokens' log-probs, the model's next-token distribution's
# mean and spread of log-probs at each position (Min-K%++) and its top-1 log-prob (Gap-K%), the
# losses of the text's neighbors; under the scan's reference model, the text's loss and its
# tokens' log-probs where the two models cut the text into the same tokens; its tokens'
# log-probs with the scan's non-member (ReCaLL) or member (Con-ReCall) prefix in front; its token
# ids and their relative frequencies in a reference corpus (DC-PDD).
NEEDS = ("text", "token_logprobs", "vocab_stats", "top1_logprobs", "neighbor_losses", "ref_loss", "ref_token_logprobs",
         "prefix_logprobs", "member_prefix_logprobs", "token_frequencies")
# The needs only a run with a setting computes, and that setting: a run without it neither
# computes nor lists the scores that need them (so its identity and columns are what they were).
SETTING_OF_NEED = {"ref_loss": "reference_model", "ref_token_logprobs": "reference_model",
                   "prefix_logprobs": "recall_prefix", "member_prefix_logprobs": "conrecall_prefix",
                   "token_frequencies": "token_frequencies"}


@dataclass
class ScoreInputs:
    """One text's inputs to the scores. A need is missing when its value is None: a backend without
    vocabulary statistics, a scan without neighbors (an empty neighbor_losses counts as missing)."""

    text: str
    token_logprobs: np.ndarray  # float64, one per scored token
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    neighbor_losses: np.ndarray | None = None
    top1_logprobs: np.ndarray | None = None
    ref_loss: float | None = None
    ref_token_logprobs: np.ndarray | None = None  # float64, aligned with token_logprobs (same token ids)
    prefix_logprobs: np.ndarray | None = None  # float64, token_logprobs' tokens after the non-member prefix
    member_prefix_logprobs: np.ndarray | None = None  # likewise after the member prefix
    token_frequencies: np.ndarray | None = None  # of token_logprobs' tokens, smoothed (scanner.frequencies)
    token_ids: np.ndarray | None = None  # token_logprobs' tokens (given with token_frequencies)

    def has(self, need: str) -> bool:
        if need == "vocab_stats":
            return self.mu is not None and self.sigma is not None
        if need == "neighbor_losses":
            return self.neighbor_losses is not None and len(self.neighbor_losses) > 0
        return getattr(self, need) is not None


@dataclass(frozen=True)
class Score:
    name: str  # the feature column
    higher_is_member: bool
    needs: tuple[str, ...]
    compute: Callable[[ScoreInputs], float] = field(compare=False)
    version: int = 1
    family: str | None = None  # scores with many variants (Min-K% at five k): plots show the family's best
    summary: str = ""  # one line for `scanner scores` and the README

    @property
    def settings(self) -> set[str]:
        """The scan settings it is computed with only (SETTING_OF_NEED)."""
        return {SETTING_OF_NEED[n] for n in self.needs if n in SETTING_OF_NEED}

    @property
    def member_sign(self) -> int:
        """member score = member_sign x stored value: higher = member, for every score."""
        return 1 if self.higher_is_member else -1


# What every run computed before this registry: a run that computes exactly these, at version 1,
# keeps its old identity (its folder resumes, its detectors apply).
BEFORE_REGISTRY = {name: 1 for name in ["loss", "zlib_ratio", *(f"min_k_{q}" for q in (5, 10, 20, 30, 50)),
                                        *(f"min_k_pp_{q}" for q in (5, 10, 20, 30, 50)), "neighborhood"]}

_REGISTRY: dict[str, Score] = {}
_ORIGIN: dict[str, str | None] = {}  # the score module that registered each (None: built in, or this process)
_LOADED: set[str] = set()
_loading: list[str] = []  # the score module being imported


def register(*scores: Score) -> None:
    """Adds scores (after the built-in ones); registering the same score again does nothing,
    another one of the same name is an error (two modules would write one column)."""
    load()
    for s in scores:
        unknown = sorted(set(s.needs) - set(NEEDS))
        if unknown:
            raise ValueError(f"score {s.name}: unknown needs {unknown} (known: {', '.join(NEEDS)})")
        if s.name in _REGISTRY and _REGISTRY[s.name] != s:
            raise ValueError(f"score {s.name} is registered twice, differently")
        _REGISTRY[s.name] = s
        _ORIGIN.setdefault(s.name, _loading[-1] if _loading and _loading[-1] != BUILT_IN else None)


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)
    _ORIGIN.pop(name, None)


def load(modules: list[str] | tuple[str, ...] = ()) -> None:
    """Imports the built-in scores and the user's score modules (each once)."""
    for module in (BUILT_IN, *modules):
        if module not in _LOADED:
            _LOADED.add(module)  # first: the module's own register() calls come back here
            _loading.append(module)
            try:
                importlib.import_module(module)
            except ImportError as e:
                _LOADED.discard(module)
                from scanner.errors import InputError

                raise InputError(f"score module {module!r} cannot be imported: {e}") from None
            finally:
                _loading.pop()


def scores(modules: list[str] | tuple[str, ...] = (), settings: set[str] | frozenset[str] | None = None) -> list[Score]:
    """The built-in scores and those of the named score modules (a module loaded for another run
    adds nothing here), in registration order: the feature columns' order. `settings`: the
    optional scan settings a run has (SETTING_OF_NEED): only the scores it computes (None: all)."""
    load(modules)
    return [s for s in _REGISTRY.values() if (_ORIGIN[s.name] is None or _ORIGIN[s.name] in modules)
            and (settings is None or s.settings <= set(settings))]


def get(name: str) -> Score:
    load()
    return _REGISTRY[name]


def names() -> list[str]:
    """The built-in scores' names (and those registered by this process)."""
    return [s.name for s in scores()]


def known() -> list[str]:
    """Every score registered in this process, a loaded score module's too: what a run's feature
    columns may hold."""
    load()
    return list(_REGISTRY)


def member_sign(name: str) -> int:
    """1 for a registered score where higher means member, -1 where lower does; 1 for anything
    else (detector outputs, derived scores are stored member-high)."""
    load()
    return _REGISTRY[name].member_sign if name in _REGISTRY else 1


def family(name: str) -> str | None:
    load()
    return _REGISTRY[name].family if name in _REGISTRY else None


def compute(inputs: ScoreInputs, which: list[str] | None = None, needs_only: tuple[str, ...] | None = None,
            modules: list[str] | tuple[str, ...] = ()) -> dict:
    """Every score's value for one text, with the scores of `modules` (None where an input it
    needs is missing, or where it is not among `which`). `needs_only`: only the scores that need
    nothing else (the others are left out, not None)."""
    out = {}
    for s in scores(modules):
        if needs_only is not None and not set(s.needs) <= set(needs_only):
            continue
        ok = (which is None or s.name in which) and all(inputs.has(n) for n in s.needs)
        out[s.name] = float(s.compute(inputs)) if ok else None
    return out


def difference(trained: dict | None, now: dict | None) -> str:
    """What differs between two runs' scores ({name: version}, None: the scores of every run before
    this registry), in words; "" when nothing does."""
    trained, now = trained or BEFORE_REGISTRY, now or BEFORE_REGISTRY
    parts = []
    if lacking := [s for s in trained if s not in now]:
        parts.append(f"the trained scores {', '.join(lacking)} are not computed now")
    if new := [s for s in now if s not in trained]:
        parts.append(f"the scores {', '.join(new)} were not computed in training")
    if versions := [f"{s} v{trained[s]} (trained) vs v{now[s]}" for s in trained if s in now and trained[s] != now[s]]:
        parts.append("other versions: " + ", ".join(versions))
    return "; ".join(parts)


def markdown_table(listed: list[Score]) -> str:
    """The scores as the README lists them (`scanner scores` prints this)."""
    rows = ["| score | member when | needs | version | what |", "|---|---|---|---|---|"]
    rows += [f"| `{s.name}` | {'higher' if s.higher_is_member else 'lower'} | {', '.join(s.needs)} | {s.version} | "
             f"{s.summary} |" for s in listed]
    return "\n".join(rows)
