"""Prefix-conditioned scores (ReCaLL, Con-ReCall): the formulas on a case computed by hand; the
prefix put in front of a text as the window allows; the log-probs after a prefix equal a plain
forward pass over prefix + text; a scan with prefix files of a tiny GPT-2 fine-tuned on half of
300 passages, where ReCaLL separates the members, the run's identity holds the prefixes'
content, and the scan and its evaluation report say the prefixes must not be among the scanned
texts."""

import json

import numpy as np
import pytest

from scanner.config import ScanConfig
from scanner.errors import InputError
from scanner.metrics import roc_auc
from scanner.scoring import registry
from scanner.scoring.interface import with_prefix
from scanner.scoring.registry import ScoreInputs
from scanner.toy import english_passages


def test_recall_and_con_recall_by_hand():
    x = ScoreInputs("t", np.array([-2.0, -2.0]), prefix_logprobs=np.array([-3.0, -3.0]),
                    member_prefix_logprobs=np.array([-1.0, -1.0]))
    s = registry.compute(x)
    assert s["recall"] == pytest.approx(3 / 2) and s["con_recall"] == pytest.approx((3 - 0.5 * 1) / 2)
    only_recall = registry.compute(ScoreInputs("t", np.array([-2.0]), prefix_logprobs=np.array([-1.0])))
    assert only_recall["recall"] == pytest.approx(0.5) and only_recall["con_recall"] is None


def test_a_prefix_keeps_its_end_as_the_window_allows():
    assert with_prefix([0, 1, 2, 3], [0, 7, 8], 10) == [0, 1, 2, 3, 0, 7, 8]
    assert with_prefix([0, 1, 2, 3], [0, 7, 8], 5) == [2, 3, 0, 7, 8]
    assert with_prefix([0, 1, 2, 3], [0, 7, 8], 3) == [0, 7, 8]  # the text fills the window: scored as alone


def test_prefix_settings_and_identity(tmp_path):
    from scanner.prefixes import read_prefixes

    plain, recall = ScanConfig(model="m"), ScanConfig(model="m", recall_prefix="p.jsonl")
    assert "recall" not in (plain.score_identity() or {}) and "recall" in recall.score_identity()
    assert "con_recall" not in recall.score_identity()
    assert plain.scoring_hash() != recall.scoring_hash()
    with pytest.raises(InputError, match="set recall_prefix too"):
        ScanConfig(model="m", conrecall_prefix="m.jsonl").validate()
    with pytest.raises(InputError, match="con_recall needs conrecall_prefix"):
        ScanConfig(model="m", recall_prefix="p.jsonl", scores=["con_recall"]).validate()
    prefix = tmp_path / "p.jsonl"
    prefix.write_text('{"text": "an unseen passage"}\n')
    assert read_prefixes(ScanConfig(model="m", recall_prefix=str(prefix))) == {"prefix_logprobs": "an unseen passage"}
    with pytest.raises(InputError, match=r"recall_prefix: no usable row in .*p.jsonl.*text column, 'input'\)$"):
        read_prefixes(ScanConfig(model="m", recall_prefix=str(prefix), text_col="input"))
    prefix.write_text('{"text": "an unseen passage"}\n{"text": ""}\n')
    with pytest.raises(InputError, match=r"recall_prefix .*p.jsonl: 1 row\(s\) unusable, e.g. row 2: empty text$"):
        read_prefixes(ScanConfig(model="m", recall_prefix=str(prefix)))


def test_the_log_probs_after_a_prefix_are_a_forward_pass_over_prefix_and_text(pretrained):
    import torch
    from transformers import AutoModelForCausalLM

    from scanner.features import ScoreActor, binding

    cfg = {"model": str(pretrained), "recall_prefix": "unused: the binding carries the text"}
    prefix = "\n\n".join(english_passages()[300:303])
    actor = ScoreActor(cfg, binding(cfg, prefixes={"prefix_logprobs": prefix}))
    assert actor.error is None
    texts = english_passages()[:5]
    got = actor._more_inputs(texts)[1]
    model = AutoModelForCausalLM.from_pretrained(str(pretrained)).eval()
    ids, _ = actor.scorer.tokenize(texts)
    for g, row in zip(got, ids):
        full = with_prefix(actor.scorer.tokenize.whole(prefix), row, actor.scorer.tokenize.max_length)
        assert len(full) > len(row)  # some prefix in front
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), -1)
        want = logp[:-1].gather(-1, torch.tensor(full[1:])[:, None])[:, 0][-(len(row) - 1):].numpy()
        np.testing.assert_allclose(g["prefix_logprobs"], want, atol=1e-4)


@pytest.mark.timeout(900)
def test_a_scan_with_prefix_files_separates_the_fine_tune_members(fine_tuned, ray_local, tmp_path, capsys):
    from scanner.cli import main
    from scanner.runfolder import RunFolder

    texts, labels = fine_tuned["texts"], fine_tuned["labels"]
    in_prefix = [i for i, y in enumerate(labels) if y][:3]  # members, as Con-ReCall's prefix: left out of the scan
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n"
                            for i, (t, y) in enumerate(zip(texts, labels)) if i not in in_prefix))
    unseen, seen = tmp_path / "unseen.jsonl", tmp_path / "seen.jsonl"
    unseen.write_text("".join(json.dumps({"text": t}) + "\n" for t in english_passages()[300:303]))
    seen.write_text("".join(json.dumps({"text": texts[i]}) + "\n" for i in in_prefix))
    args = ["scan", str(data), "--model", fine_tuned["model"], "--neighbors", "0", "--label-col", "label",
            "--recall-prefix", str(unseen), "--conrecall-prefix", str(seen), "--out", str(tmp_path / "scan")]
    assert main(args) == 0
    assert "must not be among the scanned texts" in capsys.readouterr().out
    run = RunFolder(tmp_path / "scan")
    df = run.features()
    assert df.height == 297 and df["recall"].null_count() == 0 and df["con_recall"].null_count() == 0
    assert run.manifest["prefixes"]["recall_prefix"] == str(unseen)
    y = df["label"].to_numpy()
    auc = {c: roc_auc(y, df[c].to_numpy() * registry.member_sign(c)) for c in ("loss", "recall", "con_recall")}
    print(auc)
    assert auc["recall"] > 0.58 and auc["recall"] > auc["loss"], auc  # measured 0.62 against 0.57
    assert main(["evaluate", str(tmp_path / "scan"), "--out", str(tmp_path / "eval")]) == 0
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| recall |" in report and "must not be among the scanned texts" in report
    # a prefix file edited since: another run, refused in one line
    unseen.write_text("".join(json.dumps({"text": t}) + "\n" for t in english_passages()[303:306]))
    assert main(args) == 2
    assert "holds another run" in capsys.readouterr().err
