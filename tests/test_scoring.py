import math
import zlib

import numpy as np
import pytest
import torch

from scanner.scoring import stats, vocab_stats
from scanner.scoring.hf import HFScorer

TEXTS = [
    "Short one.",
    "A somewhat longer sentence about lists, tuples and dictionaries in Python.",
    "x",
    " ".join(["The interpreter evaluates each expression from left to right."] * 6),
    "Tabs\tand\nnewlines\n\nstay.",
]


@pytest.fixture(scope="module")
def random_gpt2(tmp_path_factory):
    """A randomly initialised GPT-2 with a real BPE tokenizer, saved to disk and loaded by path."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from scanner.toy import bpe_tokenizer, english_passages

    hf_tok = bpe_tokenizer(english_passages(), 600)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(hf_tok), n_positions=64, n_embd=32, n_layer=2, n_head=2))
    path = tmp_path_factory.mktemp("random_gpt2")
    model.save_pretrained(path)
    hf_tok.save_pretrained(path)
    return str(path)


def reference(model, ids):
    """One text, no padding, full fp64 log-softmax."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    target = torch.tensor(ids[1:])
    lp = logp[torch.arange(len(target)), target]
    p = logp.exp()
    mu = (p * logp).sum(-1)
    sd = (p * (logp - mu[:, None]) ** 2).sum(-1).sqrt()
    return lp.numpy(), mu.numpy(), sd.numpy(), logp.amax(-1).numpy()


@pytest.mark.parametrize("split_head", [True, False])
def test_batched_chunked_scores_match_an_unbatched_reference(random_gpt2, monkeypatch, split_head):
    scorer = HFScorer(random_gpt2)
    assert scorer.device == "cpu" and scorer.dtype == torch.float32
    assert scorer.split_head  # base + head reproduce GPT-2's logits
    scorer.split_head = split_head  # and the fallback through the full forward agrees too
    # tiles of a few hundred logits: several slices of the vocabulary and several blocks of rows
    monkeypatch.setattr(vocab_stats, "CHUNK_BYTES", {"cpu": 4 * 600 * 3})
    monkeypatch.setattr(vocab_stats, "MIN_SLICE", 300)
    results = scorer.score_texts(TEXTS, batch_tokens=130)  # several padded batches
    ids, truncated = scorer.tokenize(TEXTS)
    assert truncated == [False, False, False, True, False] and len(ids[3]) == 64
    for text, row, res in zip(TEXTS, ids, results):
        assert row[0] == scorer.tokenizer.bos_token_id  # every text token is scored
        lp, mu, sd, top1 = reference(scorer.model, row)
        np.testing.assert_allclose(res.token_logprobs, lp, atol=1e-4)
        np.testing.assert_allclose(res.mu, mu, atol=1e-4)
        np.testing.assert_allclose(res.sigma, sd, atol=1e-4)
        np.testing.assert_allclose(res.top1_logprobs, top1, atol=1e-4)
        ref = stats.text_scores(text, lp, mu, sd, top1)
        got = stats.text_scores(text, res.token_logprobs, res.mu, res.sigma, res.top1_logprobs)
        assert got["gap_k_20"] is not None
        for key, value in ref.items():
            assert got[key] == pytest.approx(value, abs=1e-4), key
        with torch.no_grad():
            hidden = scorer.model(input_ids=torch.tensor([row]), output_hidden_states=True).hidden_states[-1][0]
        np.testing.assert_allclose(res.embedding, hidden.mean(0).numpy(), atol=1e-4)


def test_score_functions_on_hand_examples():
    from scanner.scoring.registry import ScoreInputs, get

    lp = np.array([-1.0, -2.0, -3.0, -4.0])
    x = ScoreInputs("abc", lp)
    assert get("loss").compute(x) == stats.loss(lp) == 2.5
    assert get("min_k_50").compute(x) == -3.5  # the lowest half
    assert get("min_k_5").compute(x) == -4.0  # at least one token
    mu, sd = np.array([-1.0, -1.0, -2.0, -2.0]), np.array([1.0, 2.0, 1.0, 0.5])
    # z = [0, -0.5, -1, -4] -> lowest half = mean(-4, -1)
    assert get("min_k_pp_50").compute(ScoreInputs("abc", lp, mu, sd)) == -2.5
    assert get("zlib_ratio").compute(x) == 2.5 / len(zlib.compress(b"abc"))
    assert get("neighborhood").compute(ScoreInputs("abc", lp, neighbor_losses=np.array([2.5, 1.5]))) == 0.5
    # Gap-K%: gaps (lp - top1) / sigma = [-0.5, -1.5, -1, -1.5, -4, 0], moving means of 3 =
    # [-1, -4/3, -13/6, -11/6], the lowest half = mean(-13/6, -11/6) = -2
    six = ScoreInputs("abcdef", np.array([-1.0, -2, -3, -4, -5, -1]), np.zeros(6), np.array([1.0, 1, 2, 2, 1, 1]),
                      top1_logprobs=np.array([-0.5, -0.5, -1, -1, -1, -1]))
    assert get("gap_k_50").compute(six) == pytest.approx(-2.0)
    assert get("gap_k_5").compute(six) == pytest.approx(-13 / 6)  # at least one value
    two = ScoreInputs("ab", np.array([-1.0, -3]), np.zeros(2), np.array([1.0, 2]), top1_logprobs=np.array([-1.0, -1]))
    assert get("gap_k_50").compute(two) == -1.0  # shorter than the window: the gaps [0, -1] unsmoothed
    assert stats.text_scores("abc", lp, mu, sd)["gap_k_20"] is None  # no top-1 log-probs: no Gap-K%
    s = stats.text_scores("abc", lp, None, None)
    assert s["min_k_pp_20"] is None and s["min_k_20"] == -4.0 and "neighborhood" not in s
    assert [sc.member_sign for sc in map(get, ("loss", "zlib_ratio", "min_k_20", "min_k_pp_20", "neighborhood",
                                                 "gap_k_20"))] == [-1, -1, 1, 1, -1, 1]


def test_neighbor_features_on_hand_examples():
    f = stats.neighbor_features(2.0, np.array([1.0, 0.0]), np.array([2.5, 1.5]),
                                np.array([[0.0, 1.0], [2.0, 0.0]]), projection=np.eye(2))
    assert f["nb_dL"] == [0.5, -0.5]
    assert f["nb_cos_dist"] == pytest.approx([1.0, 0.0])
    assert f["nb_l2"] == pytest.approx([math.sqrt(2), 1.0])
    assert f["nb_de_proj"] == pytest.approx([-1.0, 1.0, 1.0, 0.0])
    none = stats.neighbor_features(2.0, np.ones(2), [], [], projection=np.eye(2))  # --neighbors 0
    assert none["nb_dL"] == [] and none["nb_de_proj"] == []
    p1, p2 = stats.projection_matrix(64, 8, seed=1), stats.projection_matrix(64, 8, seed=1)
    assert p1.shape == (64, 8) and np.array_equal(p1, p2)


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])  # nearly flat, ordinary, nearly one-hot distributions
def test_vocabulary_statistics_merged_over_slices_match_float64(monkeypatch, scale):
    """The streaming pass (slices of the vocabulary merged with the pairwise mean/variance
    update) against log_softmax in float64, on a plain head, a soft-capped scaled head and a
    head that must be called whole."""
    from scanner.scoring.lm_head import LMHead

    torch.manual_seed(0)
    N, H, V = 37, 16, 1000
    hidden, weight, bias = torch.randn(N, H), torch.randn(V, H) * scale / 4, torch.randn(V)
    targets = torch.randint(0, V, (N,))
    monkeypatch.setattr(vocab_stats, "CHUNK_BYTES", {"cpu": 4 * 8 * 96})  # blocks of 8 rows, slices of 96 words
    monkeypatch.setattr(vocab_stats, "MIN_SLICE", 96)
    linear = torch.nn.Linear(H, V)
    linear.weight.data, linear.bias.data = weight, bias
    capped = LMHead(weight, bias, softcap=5.0, scale=0.5)
    whole = torch.nn.Sequential(linear)  # not a linear map the pass can slice: called whole
    for head in (linear, capped, whole):
        with torch.no_grad():
            logp = torch.log_softmax(head(hidden).double(), -1)
            got = vocab_stats.row_statistics(hidden, targets, head)
        p = logp.exp()
        mu = (p * logp).sum(-1)
        sd = (p * (logp - mu[:, None]) ** 2).sum(-1).sqrt()
        for g, want in zip(got, (logp[torch.arange(N), targets], mu, sd, logp.amax(-1))):
            np.testing.assert_allclose(g.numpy(), want.numpy(), atol=2e-5, rtol=1e-5)
    with torch.no_grad():
        flat = vocab_stats.row_statistics(hidden, targets, _zero_head(H, V))
    np.testing.assert_allclose(flat[1].numpy(), -math.log(V), rtol=1e-6)  # uniform: mu = -log V, sigma = 0
    np.testing.assert_allclose(flat[2].numpy(), 0.0, atol=1e-6)


def _zero_head(H, V):
    head = torch.nn.Linear(H, V, bias=False)
    torch.nn.init.zeros_(head.weight)
    return head
