"""A calibrated detector applied to the model it was calibrated for, not to the tuned copy, must
keep its promise (scanner.transfer): the FPR is measured again under that model on the
calibration texts it never saw, and a detector whose scores moved with the fine-tune stops the run.

End to end on the tests' tiny GPT-2 (trained on its members, so membership is known): calibrated
on text it never saw, then swept and checked nightly under the tiny model itself."""

import json

import numpy as np
import polars as pl
import pytest
import torch

from scanner.contamination import OperatingPoint
from scanner.transfer import (SHIFT_TOLERANCE, Transfer, applies_to_tuned_copy, chosen_kind, compare,
                                       operating_point_sentence, transfer_warning)
from tests.test_cli import scanner


class _Detector:
    """What compare and applies_to_tuned_copy read of a TrainedDetector."""

    def __init__(self, calibration=None, kind="tabular", threshold=0.5, op=OperatingPoint(8, 10, 1, 10)):
        self.calibration, self.kind, self.threshold, self.operating_point = calibration, kind, threshold, op
        self.scan_config = {"model": "base"}


def test_compare_measures_the_fpr_under_the_applied_model_and_the_shift_by_hand():
    never_seen = pl.DataFrame({"sample_id": ["a", "b", "c", "d"], "label": [1, 0, 1, 0],
                               "tabular": [0.9, 0.2, 0.8, 0.6]})
    applied = pl.DataFrame({"sample_id": ["d", "c", "b", "a"], "member_prob": [0.7, 0.1, 0.4, 0.3],
                            "flagged": [True, False, False, False]})
    t = compare(never_seen, applied, _Detector(), "m")
    # TPR stays the copy's (8/10); FPR: 1 of the 4 never-seen texts flagged under the applied model
    assert t.operating_point == OperatingPoint(tp=8, n_pos=10, fp=1, n_neg=4)
    assert t.fpr_tuned == 0.5  # copy non-members b 0.2, d 0.6 against the threshold 0.5
    # applied (0.7, 0.1, 0.4, 0.3) against copy non-members (0.2, 0.6): pairs won 2+0+1+1 of 8
    assert t.shift_auc == pytest.approx(4 / 8)
    with pytest.raises(Exception, match="1 of the 4 never-seen"):
        compare(never_seen, applied.filter(pl.col("sample_id") != "a"), _Detector(), "m")


def test_the_tuned_copy_is_recognised_for_both_methods(tmp_path):
    tuned = tmp_path / "finetune" / "model"
    from scanner.config import ScanConfig

    lora = _Detector({"method": "lora", "tuned_model": str(tuned)})
    assert applies_to_tuned_copy(lora, ScanConfig(model="base", adapter=str(tuned)))
    assert not applies_to_tuned_copy(lora, ScanConfig(model="base"))
    assert not applies_to_tuned_copy(lora, ScanConfig(model="other", adapter=str(tuned)))
    full = _Detector({"method": "full", "tuned_model": str(tuned)})
    assert applies_to_tuned_copy(full, ScanConfig(model=str(tuned)))
    assert not applies_to_tuned_copy(full, ScanConfig(model="base"))


def test_an_auto_detector_that_does_not_transfer_gives_way_to_one_that_does():
    def at(shift):
        return Transfer(OperatingPoint(8, 10, 3, 60), fpr_tuned=0.0, shift_auc=shift, model="m")

    moved, kept = at(0.5 - SHIFT_TOLERANCE - 0.01), at(0.5 + SHIFT_TOLERANCE - 0.01)
    val = {"tabular": 0.9, "fimmia": 0.8, "other": 0.7}
    assert chosen_kind({"tabular": moved, "fimmia": kept, "other": kept}, "tabular", True, val) == "fimmia"
    assert chosen_kind({"tabular": moved, "fimmia": kept}, "tabular", False, val) == "tabular"  # asked for
    assert chosen_kind({"tabular": moved, "fimmia": moved}, "tabular", True, val) == "tabular"  # none transfers
    assert chosen_kind({"tabular": kept, "fimmia": kept}, "tabular", True, val) == "tabular"
    said = transfer_warning(moved.to_dict())
    assert said.startswith("Warning: the calibrated detector does not transfer") and "0.050 here" in said
    sentence = operating_point_sentence({"tp": 8, "n_pos": 10, "fp": 3, "n_neg": 60}, moved.to_dict())
    assert "flagged 3/60 never-seen calibration texts under this model" in sentence and "TPR 0.800" in sentence


# ---------------------------------------------------------------- end to end


def _jsonl(path, texts, **extra):
    path.write_text("".join(json.dumps({"text": t, **extra}) + "\n" for t in texts))
    return str(path)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, tiny_lm):
    """A detector calibrated (full fine-tune, exposures 1/4/16) for the tiny model on 140 texts it
    never saw; the other texts it never saw are fresh for the sweeps."""
    root = tmp_path_factory.mktemp("transfer")
    unseen = tiny_lm["non_members"]
    held_out, fresh = unseen[:140], unseen[140:]
    (root / "scan.yaml").write_text("neighbors: 8\n")
    res = scanner("calibrate", _jsonl(root / "heldout.jsonl", held_out), "--model", tiny_lm["model"], "--out",
                  str(root / "cal"), "--method", "full", "--lr", "2e-3", "--config", str(root / "scan.yaml"),
                  timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    return {"root": root, "detector": str(root / "cal" / "detector"), "fresh": fresh, "model": tiny_lm["model"],
            "members": tiny_lm["members"], "metrics": json.loads((root / "cal" / "metrics.json").read_text())}


def _sweep(calibrated, name: str, texts: list[str], *extra):
    out = calibrated["root"] / name
    res = scanner("sweep", _jsonl(calibrated["root"] / f"{name}.jsonl", texts), "--detector", calibrated["detector"],
                  "--out", str(out), *extra)
    return res, (json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else None)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_calibrate_measures_the_transfer_to_the_original_model(calibrated):
    t = calibrated["metrics"]["transfer"]
    never_seen = pl.read_parquet(calibrated["root"] / "cal" / "detector" / "never_seen.parquet")
    test_ids = json.loads((calibrated["root"] / "cal" / "detector" / "split.json").read_text())["test_ids"]
    assert sorted(never_seen["sample_id"]) == sorted(test_ids) and set(never_seen["label"]) == {0, 1}
    for kind, d in t["detectors"].items():
        # the copy's FPR on the never-seen non-members is the saved operating point's
        op = calibrated["metrics"]["detectors"][kind]["operating_point"]
        assert d["fpr_tuned"] == pytest.approx(op["fp"] / op["n_neg"])
        assert d["operating_point"]["n_neg"] == never_seen.height and d["operating_point"]["tp"] == op["tp"]
    assert {"loss", "min_k_pp_20", "neighborhood"} <= set(t["scores"])
    print({k: round(v["shift_auc"], 3) for k, v in t["detectors"].items()},
          {k: round(v, 3) for k, v in t["scores"].items()})
    assert "## Transfer to the original model" in (calibrated["root"] / "cal" / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_sweep_of_never_seen_text_under_the_original_model_finds_nothing(calibrated):
    res, m = _sweep(calibrated, "null", calibrated["fresh"])
    if res.returncode == 2:  # the honest alternative: the detector does not transfer, said in one line
        assert "does not transfer" in res.stderr and len(res.stderr.strip().splitlines()[-1]) > 0
        return
    assert res.returncode == 0, res.stderr[-3000:]
    o, t = m["overall"], m["transfer"]
    print(o, t)
    assert o["ci"][0] == 0.0 and o["ci_over_exposures"][0] == 0.0, o  # the truth is 0: never "contaminated"
    # the FPR behind it was measured under the tiny model, on the never-seen calibration texts
    assert t["transfers"] and m["detector"]["operating_point"]["n_neg"] == t["operating_point"]["n_neg"]
    assert "never-seen calibration texts under this model" in (calibrated["root"] / "null" / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_sweep_of_members_and_fresh_text_under_the_original_model_contains_the_truth(calibrated):
    fresh = calibrated["fresh"]
    res, m = _sweep(calibrated, "half", calibrated["members"][:len(fresh)] + fresh)
    assert res.returncode == 0, res.stderr[-3000:]
    o = m["overall"]
    print(o)
    # The tiny model saw its members 25 times in pretraining: more than the calibration's pooled
    # groups, so the pooled TPR is too low and its estimate too high; the range over the exposure
    # groups' TPRs holds the truth, and its low end still says that something was seen.
    low, high = o["ci_over_exposures"]
    assert low <= 0.5 <= high and low > 0.1, o
    assert set(o["by_exposure"]) == {"seen 1x", "seen 4x", "seen 16x"}
    assert "over the calibrated exposures" in (calibrated["root"] / "half" / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_nightly_on_never_seen_text_under_the_original_model_is_clean(calibrated):
    config = calibrated["root"] / "nightly.yaml"
    config.write_text(f"detector: {calibrated['detector']}\neval_sets:\n"
                      f"  - {{name: fresh, data: [{_jsonl(calibrated['root'] / 'night.jsonl', calibrated['fresh'])}]}}\n")
    res = scanner("nightly", "--config", str(config), "--out", str(calibrated["root"] / "nights"), "--run-name", "n1")
    if res.returncode == 2:
        assert "does not transfer" in res.stderr, res.stderr[-3000:]
        return
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    m = json.loads((calibrated["root"] / "nights" / "n1" / "metrics.json").read_text())
    c = m["sets"]["fresh"]["contamination"]
    assert m["sets"]["fresh"]["status"] == "clean" and c["ci"][0] == 0.0 and c["ci_over_exposures"][0] == 0.0, c
    assert m["transfer"]["transfers"] and m["detector"]["operating_point"] == m["transfer"]["operating_point"]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_detector_whose_scores_moved_with_the_fine_tune_stops_the_sweep(tmp_path):
    """A model that knew no text (random weights), fully fine-tuned: the tuned copy learnt the
    language, so every text's scores moved; the sweep under the untouched model stops in one line,
    and with --accept-shift it estimates with the warning first."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from scanner.toy import bpe_tokenizer, english_passages

    texts = english_passages()
    tok = bpe_tokenizer(texts, 1024)
    model = tmp_path / "random"
    torch.manual_seed(0)  # the weights: not whatever the tests before left in torch's generator
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=64, n_layer=1, n_head=2,
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(model)
    tok.save_pretrained(model)
    (tmp_path / "scan.yaml").write_text("neighbors: 4\n")
    res = scanner("calibrate", _jsonl(tmp_path / "heldout.jsonl", texts[:200]), "--model", str(model), "--out",
                  str(tmp_path / "cal"), "--method", "full", "--config", str(tmp_path / "scan.yaml"), timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    shifts = {k: d["shift_auc"] for k, d in json.loads((tmp_path / "cal" / "metrics.json").read_text())[
        "transfer"]["detectors"].items()}
    print(shifts)
    assert all(abs(s - 0.5) > SHIFT_TOLERANCE for s in shifts.values())
    calibrated = {"root": tmp_path, "detector": str(tmp_path / "cal" / "detector")}
    res, m = _sweep(calibrated, "sweep", texts[200:300])
    assert res.returncode == 2 and m is None
    last = res.stderr.strip().splitlines()[-1]
    assert "does not transfer to" in last and "--accept-shift" in last and "Traceback" not in res.stderr
    res, m = _sweep(calibrated, "sweep", texts[200:300], "--accept-shift")
    assert res.returncode == 0, res.stderr[-3000:]
    assert not m["transfer"]["transfers"]
    assert (tmp_path / "sweep" / "report.md").read_text().split("**")[1].startswith("Warning: the calibrated detector")
    assert np.isclose(m["detector"]["operating_point"]["fpr"], m["transfer"]["fpr"])
