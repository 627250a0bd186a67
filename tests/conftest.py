"""Shared fixtures: one tiny GPT-2 per test session, trained here on half of the passages (so
membership is real and known), and a local Ray for the modules that need one."""

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
