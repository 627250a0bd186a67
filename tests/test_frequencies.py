"""DC-PDD and its frequency table: the score on a case computed by hand; `scanner frequencies`
counts every token of a corpus as the tokenizer cuts it (equal to a direct count), quarantines a
bad row with its reason, resumes without counting a shard twice and adds new files; a scan with
the table computes dc_pdd as the score's own function does, separates a fine-tune's members, and
a table of another tokenizer is refused in one line."""

import json
import math

import numpy as np
import pytest

from scanner.frequencies import read_table
from scanner.metrics import roc_auc
from scanner.scoring import registry
from scanner.scoring.registry import ScoreInputs
from scanner.toy import english_passages


def test_dc_pdd_by_hand():
    x = ScoreInputs("t", np.log([0.5, 0.01, 0.9, 0.001]), token_ids=np.array([5, 7, 5, 9]),
                    token_frequencies=np.array([0.01, 0.5, 0.01, 0.1]))
    # first occurrences 0, 1, 3 (the second 5 is not counted): 0.5 ln 100 capped at 0.01,
    # 0.01 ln 2, 0.001 ln 10
    want = (0.01 + 0.01 * math.log(2) + 0.001 * math.log(10)) / 3
    assert registry.compute(x)["dc_pdd"] == pytest.approx(want)
    assert registry.compute(ScoreInputs("t", np.log([0.5])))["dc_pdd"] is None  # no table


def write_jsonl(path, texts, bad_row: bool = False):
    lines = [json.dumps({"text": t}) for t in texts]
    if bad_row:
        lines.insert(2, json.dumps({"text": 7}))  # not a text: quarantined with its reason
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.timeout(900)
def test_the_table_counts_every_token_resumes_and_gives_dc_pdd(fine_tuned, ray_local, tmp_path, capsys):
    from transformers import AutoTokenizer

    from scanner.cli import main
    from scanner.runfolder import RunFolder

    corpus = english_passages(20, 39)
    a = write_jsonl(tmp_path / "a.jsonl", corpus[:400], bad_row=True)
    b = write_jsonl(tmp_path / "b.jsonl", corpus[400:])
    out = tmp_path / "freq"
    count = ["frequencies", a, "--model", fine_tuned["base"], "--out", str(out), "--shard-size", "150"]
    assert main(count) == 0
    counts, info = read_table(str(out))
    tok = AutoTokenizer.from_pretrained(fine_tuned["base"])
    want = np.bincount(np.concatenate([tok(t, add_special_tokens=False)["input_ids"] for t in corpus[:400]]),
                       minlength=len(counts))
    np.testing.assert_array_equal(counts, want)
    assert info["documents"] == 400 and info["rows_quarantined"] == 1 and info["shards"] == 3
    capsys.readouterr()
    assert main(count) == 0 and "3 done before, 0 to count" in capsys.readouterr().err  # nothing counted again
    assert main([*count[:2], b, *count[2:], "--add"]) == 0
    counts, info = read_table(str(out))
    want += np.bincount(np.concatenate([tok(t, add_special_tokens=False)["input_ids"] for t in corpus[400:]]),
                        minlength=len(counts))
    np.testing.assert_array_equal(counts, want)
    assert info["documents"] == len(corpus)

    # a scan with the table: dc_pdd as the score's own function gives it, and it finds members
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n"
                            for t, y in zip(fine_tuned["texts"], fine_tuned["labels"])))
    scan = tmp_path / "scan"
    assert main(["scan", str(data), "--model", fine_tuned["model"], "--neighbors", "0", "--label-col", "label",
                 "--token-frequencies", str(out), "--out", str(scan)]) == 0
    df = RunFolder(scan).features()
    assert df["dc_pdd"].null_count() == 0
    from scanner.scoring.hf import HFScorer

    scorer = HFScorer(fine_tuned["model"])
    freq = (want + 1) / (want.sum() + len(want))
    texts = df["text"].to_list()[:10]
    ids, _ = scorer.tokenize(texts)
    for text, row, s, got in zip(texts, ids, scorer.score_texts(texts), df["dc_pdd"].to_list()[:10]):
        r = np.array(row[1:])
        x = ScoreInputs(text, s.token_logprobs, token_ids=r, token_frequencies=freq[r])
        assert got == pytest.approx(registry.compute(x)["dc_pdd"], rel=1e-6)
    auc = roc_auc(df["label"].to_numpy(), df["dc_pdd"].to_numpy())
    print("dc_pdd AUC", auc)
    assert auc > 0.55, auc

    # a table counted with another tokenizer: refused before any work, in one line
    from tests.conftest import tiny_gpt2

    tiny_gpt2(tmp_path / "other")
    assert main(["frequencies", b, "--model", str(tmp_path / "other"), "--out", str(tmp_path / "other_freq")]) == 0
    capsys.readouterr()
    assert main(["scan", str(data), "--model", fine_tuned["model"], "--neighbors", "0",
                 "--token-frequencies", str(tmp_path / "other_freq"), "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "counted with the tokenizer of" in err and len(err.strip().splitlines()) == 1
