"""Reference-model scores (`reference_model:`): each on a case computed by hand; a scan whose
target is its own reference gives every one its neutral value; a tiny GPT-2 fine-tuned for one
epoch on half of 300 passages it never saw, scanned with its base as the reference, where the
best reference score beats the target's LOSS by >= 0.1 AUC (and a detector trained there sweeps
with the reference too); a run without a reference model keeps
its identity and columns, and a reference score without one is refused in one line."""

import json

import numpy as np
import pytest

from scanner.config import ScanConfig
from scanner.errors import InputError
from scanner.features import feature_schema
from scanner.metrics import roc_auc
from scanner.scoring import registry
from scanner.scoring.registry import ScoreInputs
from scanner.scoring.scores.wbc import window_votes

REFERENCE_SCORES = ("ref_loss_diff", "ref_loss_ratio", "ez_mia", "wbc")


def scores_of(lp, ref, top1=None, ref_loss=None):
    lp, ref = np.asarray(lp, float), np.asarray(ref, float)
    x = ScoreInputs("t", lp, top1_logprobs=None if top1 is None else np.asarray(top1, float),
                    ref_loss=float(-ref.mean()) if ref_loss is None else ref_loss, ref_token_logprobs=ref)
    return {k: v for k, v in registry.compute(x).items() if k in REFERENCE_SCORES}


def test_the_loss_difference_and_ratio_by_hand():
    s = scores_of([-1.0, -3.0], [-2.0, -3.0])  # losses 2 and 2.5
    assert s["ref_loss_diff"] == pytest.approx(-0.5) and s["ref_loss_ratio"] == pytest.approx(0.8)
    assert registry.get("ref_loss_diff").member_sign == -1 and registry.get("wbc").member_sign == 1


def test_ez_mia_by_hand():
    lp = [-0.1, -2.0, -1.0, -3.0, -0.5, -2.5]
    top1 = [-0.1, -0.5, -1.0, -0.2, -0.3, -0.4]
    ref = [-5.0, -2.5, -0.5, -2.0, -1.0, -3.5]
    # the first position is left out (its rise of 4.9 too); position 2 is a tie with the top-1, a
    # correct prediction (its fall of 0.5 too); errors at 1, 3, 4, 5 shift by +0.5, -1, +0.5, +1
    assert scores_of(lp, ref, top1)["ez_mia"] == pytest.approx(2.0 / 1.0)
    # one error position (the first is never counted): 0; no fall at the errors: 0, as the authors' code
    assert scores_of([-1.0, -2.0, -1.0], [-1.0, -3.0, -1.0], [-1.0, -0.5, -1.0])["ez_mia"] == 0.0
    assert scores_of([-1.0, -2.0, -2.0], [-1.0, -3.0, -3.0], [-1.0, -0.5, -0.5])["ez_mia"] == 0.0


def test_wbc_by_hand():
    t, r = np.array([-1.0, -2.0, -3.0]), np.array([-2.0, -1.0, -4.0])
    # windows of 1: 2 of 3 target sums above; of 2: sums equal (-3, -5 both), no vote; of 5: one
    # window of 3 tokens, -6 > -7
    assert window_votes(t, r, windows=(1, 2, 5)) == pytest.approx((2 / 3 + 0 + 1) / 3)
    # the default sizes 2, 3, ..., 40: the window of 2 votes 0, the 9 others one window of 3 each
    assert scores_of(t, r)["wbc"] == pytest.approx(0.9)
    assert window_votes(np.array([]), np.array([])) == 0.0


def test_per_token_scores_need_the_same_tokens_the_losses_do_not():
    from scanner.scoring.interface import TextScore
    from scanner.scoring.stats import sample_features

    def text_score(lp):
        lp = np.asarray(lp, float)
        return TextScore(lp, lp * 0 - 2, lp * 0 + 1, lp * 0, None, len(lp) + 1, False)

    target, ref = text_score([-1.0, -3.0, -2.0]), text_score([-2.0, -2.0])
    other_tokens = sample_features("t", target, [], None, reference=(ref, False))
    assert other_tokens["ref_loss_diff"] == pytest.approx(0.0)
    assert other_tokens["ez_mia"] is None and other_tokens["wbc"] is None
    assert sample_features("t", target, [], None)["ref_loss_diff"] is None  # no reference model


def test_a_run_without_a_reference_model_keeps_its_identity_and_columns():
    plain = ScanConfig(model="m")
    assert not set(REFERENCE_SCORES) & set(plain.score_identity() or {})
    assert not set(REFERENCE_SCORES) & set(feature_schema().names)
    assert set(REFERENCE_SCORES) <= set(feature_schema(settings={"reference_model"}).names)
    # the pre-registry identity holds (a run made then still resumes)
    assert ScanConfig(model="m", scores=list(registry.BEFORE_REGISTRY)).scoring_hash() == "ba79dc049bf68697"
    with_ref = ScanConfig(model="m", reference_model="base")
    assert set(REFERENCE_SCORES) <= set(with_ref.score_identity())
    assert with_ref.scoring_hash() != plain.scoring_hash()
    assert with_ref.feature_settings() != plain.feature_settings()  # a detector does not apply across them
    with pytest.raises(InputError, match="wbc needs reference_model: set it") as e:
        ScanConfig(model="m", scores=["loss", "wbc"]).validate()
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="image-text"):
        ScanConfig(model="m", backend="vlm", image_col="image", reference_model="base").validate()


def test_an_engine_and_its_reference_share_the_memory_half_each():
    from scanner.scoring.factory import engine_options, reference_config

    cfg = ScanConfig(model="m", backend="vllm", reference_model="base", gpu_memory_utilization=0.8, kv_cache_gib=4.0)
    ref = reference_config(cfg)
    assert ref.model == "base" and ref.reference_model is None and ref.adapter is None
    for opts in (engine_options(cfg), engine_options(ref)):
        assert opts.gpu_memory_utilization == pytest.approx(0.4) and opts.kv_cache_gib == pytest.approx(2.0)
    assert engine_options(ScanConfig(model="m", backend="vllm")).gpu_memory_utilization == 0.85


def test_a_model_that_is_its_own_reference_gives_the_neutral_values(pretrained):
    from scanner.scoring.hf import HFScorer
    from scanner.scoring.stats import sample_features
    from scanner.toy import english_passages

    scorer = HFScorer(str(pretrained))
    texts = english_passages()[:20]
    for text, s in zip(texts, scorer.score_texts(texts)):
        row = sample_features(text, s, [], None, reference=(s, True))
        assert (row["ref_loss_diff"], row["ref_loss_ratio"], row["ez_mia"], row["wbc"]) == (0.0, 1.0, 0.0, 0.0)


@pytest.mark.timeout(900)
def test_a_fine_tune_scanned_against_its_base_is_found_by_the_reference_scores(fine_tuned, ray_local, tmp_path):
    """The acceptance case: one epoch of fine-tuning on half of 300 passages the base never saw;
    LOSS alone confuses easy text with seen text, the base's loss cancels that."""
    from scanner.cli import main
    from scanner.runfolder import RunFolder

    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n"
                            for t, y in zip(fine_tuned["texts"], fine_tuned["labels"])))
    out = tmp_path / "scan"
    assert main(["scan", str(data), "--model", fine_tuned["model"], "--reference-model", fine_tuned["base"],
                 "--neighbors", "2", "--label-col", "label", "--out", str(out)]) == 0
    run = RunFolder(out)
    df = run.features()
    assert df.height == 300 and run.config["reference_model"] == fine_tuned["base"]
    assert all(df[c].null_count() == 0 for c in REFERENCE_SCORES)  # one tokenizer: every per-token score too
    y = df["label"].to_numpy()
    auc = {c: roc_auc(y, df[c].to_numpy() * registry.member_sign(c)) for c in ("loss", *REFERENCE_SCORES)}
    best = max(REFERENCE_SCORES, key=auc.get)
    print({k: round(v, 3) for k, v in auc.items()})
    assert auc[best] >= auc["loss"] + 0.1, auc
    assert all(auc[c] > 0.65 for c in REFERENCE_SCORES), auc
    # the same command resumes the finished run; the reference model is part of its identity
    assert main(["scan", str(data), "--model", fine_tuned["model"], "--reference-model", fine_tuned["base"],
                 "--neighbors", "2", "--label-col", "label", "--out", str(out)]) == 0
    assert main(["scan", str(data), "--model", fine_tuned["model"], "--neighbors", "2", "--label-col", "label",
                 "--out", str(out)]) == 2

    # a detector trained on it takes the reference scores, and a sweep with it loads the reference too
    from scanner.train import train_detectors

    train_detectors(str(out), str(tmp_path / "detector"), seed=0)
    assert main(["sweep", str(data), "--detector", str(tmp_path / "detector"), "--out", str(tmp_path / "sweep")]) == 0
    swept = RunFolder(tmp_path / "sweep")
    assert swept.config["reference_model"] == fine_tuned["base"]
    np.testing.assert_allclose(swept.features()["wbc"].to_numpy(), df["wbc"].to_numpy())
    assert main(["evaluate", str(out), "--out", str(tmp_path / "eval")]) == 0
    assert "| wbc |" in (tmp_path / "eval" / "report.md").read_text()
