"""Shared fixtures: one tiny GPT-2 trained on half of the passages (so membership is real and
known; cached on disk by its settings), and a local Ray for the modules that need one."""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from scanner.toy import english_passages, member_split, train_tiny_gpt2


TINY_LM_SETTINGS = {"target_loss": 4.2, "split_seed": 0}


def cached_model(name: str, settings: dict, train) -> Path:
    """A test model trained once per machine, not once per test session or venv (CI runs the
    suite in two): kept under SCANNER_TEST_CACHE (default: the temp folder), keyed by its
    settings and the source of the code that trains it. train(folder) -> info (JSON)."""
    import scanner.toy

    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode() + Path(scanner.toy.__file__).read_bytes())
    root = Path(os.environ.get("SCANNER_TEST_CACHE") or Path(tempfile.gettempdir()) / "scanner-test-cache")
    folder = root / f"{name}-{key.hexdigest()[:12]}"
    if not (folder / "info.json").is_file():  # written last: a half-trained folder is trained again
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=root))
        (work / "info.json").write_text(json.dumps(train(work / "model")))
        shutil.rmtree(folder, ignore_errors=True)
        work.rename(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm():
    passages = english_passages()
    members, non_members = member_split(passages, seed=TINY_LM_SETTINGS["split_seed"])
    folder = cached_model("tiny_lm", TINY_LM_SETTINGS, lambda out: train_tiny_gpt2(
        members, passages, out, target_loss=TINY_LM_SETTINGS["target_loss"], log=lambda m: None))
    return {"model": str(folder / "model"), "members": members, "non_members": non_members, "passages": passages,
            "train": json.loads((folder / "info.json").read_text())}


@pytest.fixture(scope="session")
def pretrained():
    """A tiny GPT-2 'pretrained' on short pydoc paragraphs; the long ones are text it never saw."""
    folder = cached_model("pretrained", {"target_loss": 4.5, "words": [20, 39]}, lambda out: train_tiny_gpt2(
        english_passages(20, 39), english_passages(20, 150), out, target_loss=4.5, log=lambda m: None))
    return folder / "model"


@pytest.fixture(scope="session")
def fine_tuned(pretrained, tmp_path_factory):
    """`pretrained` fully fine-tuned for one epoch on a random half of 300 passages it never saw
    (the members); the reference scores compare the two."""
    from dataclasses import asdict

    import numpy as np

    from scanner.calibrate.finetune import FinetuneSpec, finetune

    texts = english_passages()[:300]
    members = set(np.random.default_rng(0).permutation(len(texts))[: len(texts) // 2].tolist())
    spec = FinetuneSpec(model=str(pretrained), method="full", lr=1e-3, batch_size=8, max_length=128).validate()
    out = tmp_path_factory.mktemp("fine_tuned")
    finetune(asdict(spec), [texts[i] for i in sorted(members)], list(range(len(members))), str(out))
    return {"model": str(out / "model"), "base": str(pretrained), "texts": texts,
            "labels": [int(i in members) for i in range(len(texts))]}


class ActorFault:
    """A scoring actor that dies (no cleanup, like a SIGKILL or an OOM) on its second shard, once,
    when armed (scanner.faults, switched on through the Ray workers' environment)."""

    def __init__(self, flag):
        self.flag = flag
        self.flag.write_text("disarmed")

    @property
    def spec(self) -> str:
        return f"score_shard:2:{self.flag}"

    def arm(self) -> None:
        self.flag.unlink()

    def happened(self) -> bool:
        return self.flag.exists() and self.flag.read_text() != "disarmed"


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    ray = pytest.importorskip("ray")
    fault = ActorFault(tmp_path_factory.mktemp("faults") / "actor-died")
    # more logical CPUs than cores: the scoring actor must not starve the read/perturb tasks
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=300 * 1024**2, log_to_driver=False,
             runtime_env={"env_vars": {"SCANNER_FAULT": fault.spec}})
    yield fault
    ray.shutdown()


def train_tiny_detector(root, tiny_lm, neighbors: int) -> str:
    """Scan all labelled passages under the tiny model and train the detectors on them (needs Ray)."""
    from scanner.cli import main
    from scanner.train import train_detectors

    labelled = root / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for y, texts in
                                ((1, tiny_lm["members"]), (0, tiny_lm["non_members"])) for t in texts))
    assert main(["scan", str(labelled), "--model", tiny_lm["model"], "--out", str(root / "scan"),
                 "--neighbors", str(neighbors)]) == 0
    train_detectors(str(root / "scan"), str(root / "detector"), seed=0)
    return str(root / "detector")


def tiny_gpt2(path):
    """A random-init GPT-2 small enough to load in a second (for mechanics, not membership)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from scanner.toy import bpe_tokenizer, english_passages

    tok = bpe_tokenizer(english_passages(), 500)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(path)
    tok.save_pretrained(path)


def wait_until_dead(actor, within: float = 60.0) -> None:
    """Asserts that a killed actor goes away. ray.kill is asynchronous: the actor may still answer
    a call after it, so this waits (bounded) for the state instead of racing it."""
    import time

    import ray

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ready.remote(), timeout=within)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.2)
    pytest.fail(f"the actor still answers {within:g} s after it was shut down")
