"""`scanner calibrate`: the random split, the fine-tune (resume after a kill ends where an
uninterrupted run ends), and the whole path on a tiny GPT-2 that was "pretrained" here on other text."""

import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from scanner.calibrate.finetune import FinetuneSpec, finetune
from scanner.calibrate.split import calibration_split, training_stream
from scanner.detector.data import grouped_split
from scanner.errors import InputError
from scanner.storage import Store
from scanner.toy import english_passages


def samples(n: int) -> pl.DataFrame:
    return pl.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "text": [f"text number {i}" for i in range(n)],
                         "source": ["a.jsonl"] * n})


def test_split_is_random_balanced_and_independent_of_the_detector_split():
    df = samples(600)
    split, repeated = calibration_split(df, 0.5, [1, 4, 16], seed=3)
    assert repeated == 0 and split["label"].sum() == 300
    assert split.filter(pl.col("label") == 1)["exposure"].value_counts().sort("exposure")["count"].to_list() == [100] * 3
    assert set(split.filter(pl.col("label") == 0)["exposure"]) == {0}
    # a function of ids and seed: row order does not matter, another seed gives another split
    again, _ = calibration_split(df.reverse(), 0.5, [1, 4, 16], seed=3)
    assert dict(zip(again["sample_id"], again["exposure"])) == dict(zip(split["sample_id"], split["exposure"]))
    other, _ = calibration_split(df, 0.5, [1, 4, 16], seed=4)
    assert (other.sort("sample_id")["label"] != split.sort("sample_id")["label"]).sum() > 200
    # the detector's test part (same ids, same seed) holds members and non-members in about equal shares
    test = grouped_split(split, seed=3)["test"]
    assert 0.35 < split.filter(pl.Series(test))["label"].mean() < 0.65


def test_split_drops_repeated_texts_and_refuses_bad_options():
    df = pl.concat([samples(40), samples(40).with_columns(pl.format("copy{}", "sample_id").alias("sample_id"))])
    split, repeated = calibration_split(df, 0.5, [1, 4], seed=0)
    assert repeated == 40 and split.height == 40 and split["text"].n_unique() == 40
    for fraction, exposures in ((0.0, [1]), (1.0, [1]), (0.5, [0, 4]), (0.5, [])):
        with pytest.raises(InputError):
            calibration_split(df, fraction, exposures, seed=0)
    with pytest.raises(InputError, match="too few"):
        calibration_split(samples(8), 0.5, [1, 4, 16], seed=0)


def test_training_stream_shows_each_member_its_exposure_per_epoch():
    exposure = [1, 4, 16, 4]
    stream = training_stream(exposure, epochs=2, seed=0)
    assert np.bincount(stream).tolist() == [2, 8, 32, 8]
    assert stream != sorted(stream)  # shuffled: repeats of one text are spread out


def _finetune_in_subprocess(spec: dict, texts, stream, folder, env) -> subprocess.CompletedProcess:
    code = ("import json, sys; from scanner.calibrate.finetune import finetune; "
            "a = json.loads(sys.argv[1]); finetune(a['spec'], a['texts'], a['stream'], a['folder'])")
    arg = json.dumps({"spec": spec, "texts": texts, "stream": stream, "folder": str(folder)})
    return subprocess.run([sys.executable, "-c", code, arg], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_killed_finetune_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path, method):
    import os

    from tests.conftest import tiny_gpt2

    tiny_gpt2(tmp_path / "base")
    texts = english_passages()[:12]
    stream = training_stream([1, 2, 3] * 4, epochs=1, seed=0)
    spec = FinetuneSpec(model=str(tmp_path / "base"), method=method, lr=1e-3, batch_size=4, checkpoint_every=3,
                        max_length=64).validate()
    from dataclasses import asdict

    whole = finetune(asdict(spec), texts, stream, str(tmp_path / "whole"))
    assert whole["steps"] == 6 and whole["resumed_from"] is None and len(whole["losses"]) == 6
    flag = tmp_path / "killed"
    env = os.environ | {"SCANNER_FAULT": f"finetune_checkpoint:1:{flag}"}
    killed = _finetune_in_subprocess(asdict(spec), texts, stream, tmp_path / "resumed", env)
    assert killed.returncode == 1 and flag.exists()  # died right after the checkpoint at step 3
    assert not (tmp_path / "resumed" / "log.json").exists()
    resumed = finetune(asdict(spec), texts, stream, str(tmp_path / "resumed"))
    assert resumed["resumed_from"] == 3 and resumed["steps"] == 6
    np.testing.assert_allclose(resumed["losses"], whole["losses"], rtol=1e-4)
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    a, b = (load_file(tmp_path / run / "model" / name) for run in ("whole", "resumed"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-5)
    # done: the same command again does nothing; other settings are refused
    assert finetune(asdict(spec), texts, stream, str(tmp_path / "resumed"))["skipped"]
    with pytest.raises(InputError, match="other settings"):
        finetune(asdict(spec) | {"lr": 1e-2}, texts, stream, str(tmp_path / "resumed"))


@pytest.mark.slow  # ~1.5 minutes with its model cached
@pytest.mark.timeout(1200)
def test_calibrate_end_to_end_gives_an_honest_detector_that_a_sweep_uses(tmp_path, pretrained):
    from tests.test_cli import scanner

    held_out = english_passages()
    heldout_file, fresh = tmp_path / "heldout.jsonl", held_out[300:]
    heldout_file.write_text("".join(json.dumps({"id": f"h{i}", "text": t}) + "\n" for i, t in enumerate(held_out[:300])))
    # the model calibrated as its own reference: the reference scores are reported, not detector inputs
    (tmp_path / "scan.yaml").write_text(f"neighbors: 8\nreference_model: {pretrained}\n")
    out = tmp_path / "cal"
    res = scanner("calibrate", str(heldout_file), "--model", str(pretrained), "--out", str(out), "--method", "full",
                  "--lr", "2e-3", "--config", str(tmp_path / "scan.yaml"), timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    lo, hi = m["blind_baseline"]["auc_ci"]
    assert lo <= 0.5 <= hi  # a random split of clean text: the text alone cannot tell
    assert m["counts"]["members"] == 150 and m["counts"]["per_exposure"] == {"1": 50, "4": 50, "16": 50}
    top = m["by_exposure"]["seen 16x"]
    best = max(top[f"{k} detector"]["auc"] for k in ("fimmia", "tabular"))
    assert best > 0.8, {k: v["auc"] for k, v in top.items()}
    left_out = m["reference"]["left_out_of_detectors"]
    assert set(left_out) == {"ref_loss_diff", "ref_loss_ratio", "ez_mia", "wbc"} and set(left_out) <= set(top)
    assert top["ref_loss_ratio"]["auc"] > 0.8, top["ref_loss_ratio"]
    assert m["detectors"]["tabular"]["form"] not in left_out
    # the tabular detector falls back to a single score when no learned combination beats it
    classic = max(v["auc"] for k, v in top.items() if "detector" not in k and k != "blind baseline" and k not in left_out)
    print({k: round(v["auc"], 3) for k, v in top.items()}, m["detectors"]["tabular"]["form"])
    assert top["tabular detector"]["auc"] >= classic - 0.02
    assert f"form is {m['detectors']['tabular']['form']}" in (out / "report.md").read_text()
    # the blind baseline ran once, before the fine-tune; the detector folder took its scores
    assert pl.read_parquet(out / "detector" / "baseline_scores.parquet").sort("sample_id").equals(
        pl.read_parquet(out / "baseline_scores.parquet").sort("sample_id"))
    assert "fine-tune step" in res.stderr + res.stdout  # progress per step
    assert json.loads((out / "detector" / "calibration.json").read_text())["exposures"] == [1, 4, 16]
    saved_config = json.loads((out / "detector" / "scan_config.json").read_text())
    assert saved_config["model"] == str(pretrained) and saved_config["reference_model"] is None
    assert not set(left_out) & set(saved_config["scores"])
    for name in ("report.md", "report.html", "finetune_loss.png", "headline_auc.png"):
        assert (out / name).is_file()
    md = (out / "report.md").read_text()
    assert "controlled contamination" in md and md.index("**Model ") < md.index("headline_auc.png") < md.index("## ")
    assert "against its own base" in md
    # the calibration's own scan evaluated with its detector: the detectors take their scores, the
    # report every score of the scan, the reference ones included
    res = scanner("evaluate", str(out / "scan"), "--detector", str(out / "detector"), "--out", str(tmp_path / "ev"))
    assert res.returncode == 0, res.stderr[-3000:]
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())["scores"]
    assert {"tabular detector", "fimmia detector", "wbc"} <= set(ev), sorted(ev)

    # the detector drives a sweep of the tuned copy over a 50/50 mix of members and fresh text
    split = pl.read_parquet(out / "set.parquet")
    members = split.filter(pl.col("label") == 1)["text"].to_list()[:len(fresh)]
    mix = tmp_path / "mix.jsonl"
    mix.write_text("".join(json.dumps({"text": t}) + "\n" for t in members + fresh))
    res = scanner("sweep", str(mix), "--detector", str(out / "detector"), "--model", str(out / "finetune" / "model"),
                  "--out", str(tmp_path / "sweep"))
    assert res.returncode == 0, res.stderr[-3000:]
    swept = json.loads((tmp_path / "sweep" / "metrics.json").read_text())
    assert swept["overall"]["ci"][0] <= 0.5 <= swept["overall"]["ci"][1], swept["overall"]
    assert swept["transfer"] is None  # the tuned copy itself: its operating point, measured on it
    assert "transfer" not in res.stderr.lower()

    # the same command again resumes every step and redoes no fine-tuning
    res = scanner("calibrate", str(heldout_file), "--model", str(pretrained), "--out", str(out), "--method", "full",
                  "--lr", "2e-3", "--config", str(tmp_path / "scan.yaml"), timeout=1200)
    assert res.returncode == 0 and "(done before)" in res.stderr, res.stderr[-3000:]
    assert "0 to score" in res.stderr and "scored again" not in res.stderr


def test_the_split_file_is_written_once_so_that_a_rerun_resumes_the_scan(tmp_path):
    from scanner.calibrate.run import _split, _write_split
    from scanner.corpus import Columns

    data = tmp_path / "h.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in english_passages()[:30]))
    args = ([str(data)], Columns(label=None), 0.5, [1, 4], 0)
    _write_split(Store(str(tmp_path)), _split(*args, progress=lambda m: None)[0])
    before = (tmp_path / "set.parquet").stat().st_mtime_ns
    os.utime(tmp_path / "set.parquet", ns=(before - 10**9, before - 10**9))  # as if written a second earlier
    _write_split(Store(str(tmp_path)), _split(*args, progress=lambda m: None)[0])
    # the engine takes a changed input file for new data and scores all its shards again
    assert (tmp_path / "set.parquet").stat().st_mtime_ns == before - 10**9


def test_a_split_the_text_alone_separates_stops_the_run(tmp_path):
    from scanner.calibrate.run import _checked_baseline
    from tests.test_cli import shifted_corpus

    rows = [json.loads(line) for line in shifted_corpus(tmp_path / "shifted.jsonl").read_text().splitlines()][:-1]
    split = pl.DataFrame({"sample_id": [r["id"] for r in rows], "text": [r["text"] for r in rows],
                          "source": ["x"] * len(rows), "label": [r["label"] for r in rows]})
    with pytest.raises(InputError, match="by their text alone"):
        _checked_baseline(split, Store(str(tmp_path)), seed=0, progress=lambda m: None)
    assert json.loads((tmp_path / "baseline.json").read_text())["auc"] > 0.9  # kept: a rerun does not redo it


def test_calibrate_command_rejects_bad_options_in_one_line(tmp_path, capfd):
    from scanner.cli import main

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")  # looks like a checkpoint: the other checks come first
    data = tmp_path / "h.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in english_passages()[:20]))
    for args, message in ((["--exposures", "1,x"], "comma-separated"),
                          (["--method", "qlora"], "is not one of"),
                          (["--members-fraction", "1.5"], "strictly between 0 and 1"),
                          (["--model", str(tmp_path / "nowhere")], "no such folder")):
        try:
            code = main(["calibrate", str(data), "--out", str(tmp_path / "out"), *(["--model", str(model)] if
                         "--model" not in args else []), *args])
        except SystemExit as e:  # argparse's own refusals
            code = e.code
        err = capfd.readouterr().err
        assert code == 2 and message in err, (args, err[-2000:])


def test_a_scan_scores_base_plus_adapter_as_the_peft_model_does(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from scanner.config import ScanConfig
    from scanner.scoring.factory import check_adapter_path
    from scanner.scoring.hf import HFScorer
    from tests.conftest import tiny_gpt2

    tiny_gpt2(tmp_path / "base")
    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    text = english_passages()[0]
    scorer = HFScorer(str(tmp_path / "base"), adapter=str(tmp_path / "adapter"), max_length=64)
    plain = HFScorer(str(tmp_path / "base"), max_length=64)
    ids = torch.tensor([scorer.tokenize([text])[0][0]])
    with torch.no_grad():
        expected = -peft_model.eval()(input_ids=ids, labels=ids).loss.item()  # mean log-prob of tokens 2..n
    got, base = (s.score_texts([text])[0].token_logprobs.mean() for s in (scorer, plain))
    assert got == pytest.approx(expected, abs=1e-4) and abs(base - expected) > 1e-3  # the adapter changed it
    with pytest.raises(InputError, match="adapter_config.json"):
        check_adapter_path(str(tmp_path / "base"))
    # (vLLM serves the adapter unmerged: tests/test_vllm_engine.py)
    ScanConfig(model="m", adapter=str(tmp_path / "adapter"), backend="vllm").validate()


def test_a_calibration_folder_refuses_another_split_or_fine_tune_before_any_work(tmp_path):
    """The folder's run.json binds it to one split, fine-tune and scan settings: a command with
    other exposures (another split) or another learning rate is refused in one line, and the
    folder's files stay as they were."""
    from scanner.calibrate.run import identity, run_calibration
    from scanner.config import ScanConfig
    from scanner.corpus import Columns
    from scanner.runfolder import save_identity
    from tests.conftest import tiny_gpt2

    tiny_gpt2(tmp_path / "base")
    data = tmp_path / "h.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in english_passages()[:40]))
    cfg = ScanConfig(model=str(tmp_path / "base")).validate()
    spec = FinetuneSpec(model=cfg.model, method="full").validate()
    out = tmp_path / "cal"
    from scanner.calibrate.run import _split

    split, _ = _split([str(data)], Columns(label=None), 0.5, [1, 4], 0, progress=lambda m: None)
    save_identity(Store(str(out)), identity(split, spec, cfg))  # as a first run left it
    for exposures, changed_spec, differs in (([1, 2], spec, "split"),
                                             ([1, 4], FinetuneSpec(model=cfg.model, method="full", lr=1e-3), "finetune")):
        with pytest.raises(InputError, match=f"holds another run \\({differs} "):
            run_calibration([str(data)], str(out), cfg, changed_spec, exposures, progress=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]  # no split written, nothing started
