"""`scanner hessian`: the curvature estimates against the exact input-space Hessian of a tiny
model, and the command end to end."""

import numpy as np
import pytest
import torch

from scanner.hessian.curvature import EmbeddingLoss, hutchinson, lanczos


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, attn_implementation="eager")
    return GPT2LMHeadModel(cfg).double().eval()


def test_hutchinson_and_lanczos_match_the_exact_hessian(tiny_model):
    rng = np.random.default_rng(0)
    for sample in range(4):
        ids = rng.integers(0, 50, 8).tolist()
        f = EmbeddingLoss(tiny_model, ids)
        exact = torch.autograd.functional.hessian(
            lambda e: tiny_model(inputs_embeds=e[None], labels=f.ids).loss, f.e0).reshape(f.dim, f.dim)
        # transformers' causal-LM loss casts the logits to fp32 (ForCausalLMLoss), so float64 is
        # exact only to fp32's rounding: ~1e-9 of the Hessian's scale measured (5.20)
        tol = 1e-7 * float(exact.abs().max())
        assert torch.allclose(exact, exact.T, atol=tol)
        probe = torch.randn(f.dim, dtype=torch.float64)
        assert torch.allclose(f.hvp(probe), exact @ probe, atol=tol * float(probe.abs().sum()))
        g = torch.Generator().manual_seed(sample)
        trace, se = hutchinson(f.hvp, f.dim, 64, g, f.e0)
        true = float(torch.trace(exact))
        assert abs(trace - true) <= 3 * se, (sample, trace, true, se)
        eig = torch.linalg.eigvalsh(exact)
        lo, hi = lanczos(f.hvp, f.dim, f.dim, g, f.e0)
        scale = float(eig.abs().max())
        assert abs(lo - float(eig[0])) <= 1e-3 * scale and abs(hi - float(eig[-1])) <= 1e-3 * scale
        assert eig[0] < 0  # the input-space Hessian of a random model is indefinite, as FiMMIA reports


def test_hutchinson_needs_two_probes(tiny_model):
    f = EmbeddingLoss(tiny_model, [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2 probes"):
        hutchinson(f.hvp, f.dim, 1, torch.Generator(), f.e0)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_hessian_command_end_to_end_resumes_and_sets_the_trace_beside_the_attacks(tiny_lm, ray_local, tmp_path, capfd):
    import json

    import polars as pl

    from scanner.cli import main

    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for y, texts in
                            ((1, tiny_lm["members"][:24]), (0, tiny_lm["non_members"][:24])) for t in texts))
    out = tmp_path / "h"
    args = ["hessian", str(data), "--model", tiny_lm["model"], "--out", str(out), "--probes", "4", "--eigs", "4",
            "--lanczos-steps", "6", "--max-tokens", "32"]
    assert main(args) == 0
    s = pl.read_parquet(out / "samples.parquet")
    m = json.loads((out / "metrics.json").read_text())
    assert s.height == 48 and (s["trace_se"] > 0).all() and s["tokens"].max() == 32
    eig = s.filter(pl.col("eig_min").is_not_null())
    assert sorted(eig["label"].to_list()) == [0, 0, 1, 1] and (eig["eig_min"] <= eig["eig_max"]).all()
    assert m["auc"]["loss"]["auc"] > 0.7  # the light scan's LOSS sees the tiny model's members
    assert set(m["auc"]) == {"trace", "trace per token", "loss", "min_k_pp_20"}
    md = (out / "report.md").read_text()
    assert md.index(m["conclusion"]) < md.index("headline_auc.png") and (out / "eig_min.png").is_file()

    # the same run with a scan of the same data: resumes (nothing measured again), adds the neighborhood score
    assert main(["scan", str(data), "--model", tiny_lm["model"], "--out", str(tmp_path / "scan"), "--neighbors", "2",
                 "--label-col", "label"]) == 0
    capfd.readouterr()
    assert main(args + ["--scan", str(tmp_path / "scan")]) == 0
    assert "6 chunks: 6 done before, 0 to measure" in capfd.readouterr().err
    again = json.loads((out / "metrics.json").read_text())
    assert "neighborhood" in again["auc"] and again["auc"]["trace"] == m["auc"]["trace"]
    assert pl.read_parquet(out / "samples.parquet")["trace"].equals(s["trace"])
    assert main(args[:-2] + ["--max-tokens", "16"]) == 2  # other settings in the same folder: refused
    capfd.readouterr()
    assert main(["hessian", str(data), "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "h2")]) == 2
    assert main(args + ["--probes", "1"]) == 2
    err = capfd.readouterr().err
    assert "nowhere: no such folder" in err and "--probes must be at least 2" in err
