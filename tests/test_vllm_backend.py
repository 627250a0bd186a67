"""The vLLM backend on CPU: output conversion against vLLM-shaped outputs, the missing-extra
error, config validation, and the whole VLLMScorer path against a stand-in engine that answers
like vllm.LLM from an HF model. The real parity test needs vllm and a GPU."""

import sys
import types
from collections import namedtuple
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from scanner.config import ScanConfig
from scanner.errors import InputError
from scanner.scoring import stats
from scanner.scoring.factory import check_backend_installed
from scanner.scoring.options import EngineOptions
from scanner.scoring.vllm import VLLMScorer, prompt_token_logprobs, to_text_scores
from tests.conftest import tiny_gpt2

Logprob = namedtuple("Logprob", "logprob rank decoded_token", defaults=(None, None))
Output = namedtuple("Output", "prompt_token_ids prompt_logprobs")


class FlatLike(Sequence):
    """Reads like vLLM's FlatLogprobs: positions on demand from flat lists."""

    def __init__(self, positions):
        self.starts, self.ids, self.lps = [0], [], []
        for pos in positions:
            for tid, lp in (pos or {}).items():
                self.ids.append(tid)
                self.lps.append(lp.logprob)
            self.starts.append(len(self.ids))
        self.none = [p is None for p in positions]

    def __len__(self):
        return len(self.none)

    def __getitem__(self, t):
        if self.none[t]:
            return None
        a, b = self.starts[t], self.starts[t + 1]
        return {tid: Logprob(lp) for tid, lp in zip(self.ids[a:b], self.lps[a:b])}


POSITIONS = [None, {5: Logprob(-1.25, 2), 9: Logprob(-0.5, 1)}, {7: Logprob(-2.0, 3), 1: Logprob(-0.1, 1)}]


@pytest.mark.parametrize("container", [list, FlatLike])
def test_prompt_logprobs_convert_to_actual_token_arrays(container):
    lp = prompt_token_logprobs([1, 5, 7], container(POSITIONS))
    np.testing.assert_array_equal(lp, [-1.25, -2.0])  # the actual tokens, not the top-ranked ones


def test_conversion_refuses_incomplete_outputs():
    with pytest.raises(ValueError, match="no log-prob for the actual token at position 2"):
        prompt_token_logprobs([1, 5, 8], POSITIONS)
    with pytest.raises(ValueError, match="3 positions for a 4-token prompt"):
        prompt_token_logprobs([1, 5, 7, 2], POSITIONS)
    with pytest.raises(ValueError, match="prompt_logprobs set"):
        prompt_token_logprobs([1, 5], None)


def test_text_scores_have_no_min_k_plus_plus():
    (score,) = to_text_scores([[1, 5, 7]], [False], [Output([1, 5, 7], POSITIONS)])
    assert score.mu is None and score.sigma is None and score.embedding is None and score.n_tokens == 3
    s = stats.text_scores("text", score.token_logprobs, score.mu, score.sigma)
    assert s["loss"] == pytest.approx(1.625) and s["min_k_pp_20"] is None


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


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in `vllm` module whose LLM computes prompt log-probs with an HF model, the way
    vLLM lays them out (None first, then {token_id: Logprob} with the actual token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    class LLM:
        def __init__(self, model, **kwargs):
            self.kwargs = kwargs
            self.model = AutoModelForCausalLM.from_pretrained(model).eval()
            self.tok = AutoTokenizer.from_pretrained(model)
            cfg = types.SimpleNamespace(max_model_len=kwargs.get("max_model_len") or self.model.config.n_positions)
            self.llm_engine = types.SimpleNamespace(model_config=cfg)

        def get_tokenizer(self):
            return self.tok

        def generate(self, prompts, params, use_tqdm=False):
            assert params.kwargs["prompt_logprobs"] == 0 and params.kwargs["max_tokens"] == 1
            outs = []
            for p in prompts:
                ids = p["prompt_token_ids"]
                with torch.no_grad():
                    logp = torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
                positions = [None] + [{ids[t]: Logprob(float(logp[t - 1, ids[t]]))} for t in range(1, len(ids))]
                outs.append(Output(ids, FlatLike(positions) if params.kwargs.get("flat_logprobs") else positions))
            return outs

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    module = types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_vllm_scorer_path_matches_the_hf_backend(fake_vllm, tmp_path):
    from scanner.scoring.hf import HFScorer
    from scanner.toy import english_passages

    texts = english_passages()[:6]
    tiny_gpt2(tmp_path)
    v = VLLMScorer(str(tmp_path), engine=EngineOptions(gpu_memory_utilization=0.5))
    assert v.llm.kwargs["gpu_memory_utilization"] == 0.5 and v.params.kwargs["flat_logprobs"] is True
    hf = HFScorer(str(tmp_path))
    for a, b in zip(v.score_texts(texts), hf.score_texts(texts)):
        assert a.n_tokens == b.n_tokens and a.truncated == b.truncated  # same token ids
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-4)


def test_score_actor_on_the_vllm_backend_leaves_unavailable_features_null(fake_vllm, tmp_path):
    import pyarrow as pa

    from scanner.features import ScoreActor, perturb_batch

    tiny_gpt2(tmp_path)
    cfg = ScanConfig(model=str(tmp_path), backend="vllm", neighbors=3).validate()
    batch = pa.table({"sample_id": ["a"], "text": ["The interpreter reads each line and runs it."],
                      "label": pa.array([1], pa.int8()), "source": ["s"], "file": ["f"], "row": [1], "shard": ["f-00000"]})
    row = ScoreActor(cfg.__dict__).score_batch(perturb_batch(batch, cfg.neighbor_config())).to_pylist()[0]
    assert row["loss"] > 0 and len(row["nb_dL"]) == 3 and row["neighborhood"] is not None
    assert row["min_k_20"] is not None and row["min_k_pp_20"] is None  # no vocabulary statistics
    assert row["nb_cos_dist"] is None and row["nb_de_proj"] is None  # no embedder configured


@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM/HF parity needs a GPU (none here)")
def test_vllm_and_hf_agree_on_a_real_engine(tmp_path):
    pytest.importorskip("vllm", reason="vllm is not installed (optional extra scanner[vllm])")
    from scanner.scoring.hf import HFScorer
    from scanner.toy import english_passages

    model = "HuggingFaceTB/SmolLM2-135M"
    texts = english_passages()[:16]
    v = VLLMScorer(model, dtype="float32", engine=EngineOptions(gpu_memory_utilization=0.3))
    hf = HFScorer(model, dtype="float32")
    for a, b in zip(v.score_texts(texts), hf.score_texts(texts)):
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=2e-3)
