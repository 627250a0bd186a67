"""Shared fixtures: one tiny GPT-2 per test session, trained here on half of the passages (so
membership is real and known), and a local Ray for the modules that need one."""

import json

import pytest

from scanner.toy import english_passages, member_split, train_tiny_gpt2


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_lm")
    passages = english_passages()
    members, non_members = member_split(passages, seed=0)
    info = train_tiny_gpt2(members, passages, root / "model", target_loss=4.2, log=lambda m: None)
    return {"model": str(root / "model"), "members": members, "non_members": non_members, "passages": passages,
            "train": info}


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    # more logical CPUs than cores: the scoring actor must not starve the read/perturb tasks
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=300 * 1024**2, log_to_driver=False)
    yield ray
    ray.shutdown()


def train_tiny_detector(root, tiny_lm, neighbors: int) -> str:
    """Scan all labelled passages under the tiny model and train the detectors on them (needs Ray)."""
    from scanner.cli import main
    from scanner.detector.train import train_detectors

    labelled = root / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for y, texts in
                                ((1, tiny_lm["members"]), (0, tiny_lm["non_members"])) for t in texts))
    assert main(["scan", str(labelled), "--model", tiny_lm["model"], "--out", str(root / "scan"),
                 "--neighbors", str(neighbors)]) == 0
    train_detectors(str(root / "scan"), str(root / "detector"), seed=0)
    return str(root / "detector")
