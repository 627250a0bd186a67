"""A new attack is one file: a score registered from this test module alone (nothing edited
elsewhere) is a feature column, a detector input, an evaluate row and a report row; a run's
identity carries every computed score's version."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from scanner.config import ScanConfig
from scanner.errors import InputError
from scanner.scoring import registry
from scanner.scoring.registry import Score, ScoreInputs
from tests.fake_scan import write_fake_run

ROOT = Path(__file__).resolve().parents[1]
TOP_HALF = Score("top_half_logprob", higher_is_member=True, needs=("token_logprobs",),
                 compute=lambda x: float(np.mean(np.sort(x.token_logprobs)[len(x.token_logprobs) // 2:])),
                 summary="mean of the higher half of the token log-probs (a test's score)")


@pytest.fixture
def top_half():
    registry.register(TOP_HALF)
    yield TOP_HALF
    registry.unregister(TOP_HALF.name)


def test_the_new_score_computes_its_definition_on_a_hand_case(top_half):
    scores = registry.compute(ScoreInputs("text", np.array([-1.0, -2.0, -3.0, -4.0])))
    assert scores["top_half_logprob"] == -1.5  # mean(-2, -1)
    assert list(scores)[-1] == "top_half_logprob" and scores["min_k_pp_20"] is None  # no vocabulary statistics


def test_a_score_registered_here_is_a_feature_column_a_detector_input_an_evaluate_row_and_a_report_row(
        top_half, tiny_lm, tmp_path):
    from scanner.train import train_detectors
    from scanner.evaluate import evaluate, write_evaluation_report
    from scanner.features import ScoreActor, perturb_batch

    # a feature column: a real scoring actor (the tests' trained tiny GPT-2) scores a batch
    cfg = ScanConfig(model=tiny_lm["model"], neighbors=2, neighbor_kinds=["delete"]).validate()
    texts = tiny_lm["members"][:2] + tiny_lm["non_members"][:2]
    batch = pa.table({"sample_id": ["a", "b", "c", "d"], "text": texts, "label": pa.array([1, 1, 0, 0], pa.int8()),
                      "source": ["s"] * 4, "file": ["f"] * 4, "row": [1, 2, 3, 4], "shard": ["f-00000"] * 4})
    rows = ScoreActor(cfg.__dict__).score_batch(perturb_batch(batch, cfg.neighbor_config())).to_pylist()
    for row in rows:  # the higher half's mean log-prob lies above the lower half's (Min-K% 50%)
        assert row["top_half_logprob"] > row["min_k_50"] and -row["loss"] == pytest.approx(
            (row["top_half_logprob"] + row["min_k_50"]) / 2, abs=0.1)

    # a detector input, an evaluate row, a report row: a run folder whose rows carry it
    write_fake_run(tmp_path / "run", n=600, signal=1.5)
    train_detectors(str(tmp_path / "run"), str(tmp_path / "model"), seed=0)
    assert "top_half_logprob" in json.loads((tmp_path / "model" / "tabular.json").read_text())["feature_names"]
    ev = evaluate(tmp_path / "run", tmp_path / "model", n_boot=100)
    assert 0.0 <= ev.metrics["scores"]["top_half_logprob"]["auc"] <= 1.0
    write_evaluation_report(ev, tmp_path / "report")
    assert "| top_half_logprob |" in (tmp_path / "report" / "report.md").read_text()


def test_a_run_that_computes_another_score_set_is_another_run(tmp_path):
    """A scan finished before a score existed: once it is registered, the same command is another
    run, refused in that folder in one line (never a mix of shards with and without it)."""
    from scanner.runfolder import RunFolder

    write_fake_run(tmp_path / "run", n=50)  # a finished scan, with the scores of every run before the registry
    fake = ScanConfig(model="fake-model", neighbors=6, proj_dim=4)
    before = fake.scoring_hash()
    # the identity runs made before the registry have, kept by those that compute the same scores
    assert ScanConfig(model="m", scores=list(registry.BEFORE_REGISTRY)).scoring_hash() == "ba79dc049bf68697"
    registry.register(TOP_HALF)
    try:
        assert fake.score_identity()["top_half_logprob"] == 1 and fake.scoring_hash() != before
        assert ScanConfig(model="fake-model", neighbors=6, proj_dim=4, scores=registry.names()[:-1]).scoring_hash() == before
        with pytest.raises(InputError, match="holds another run") as refused:
            with RunFolder(tmp_path / "run").claim({"kind": "scan", "scoring_hash": fake.scoring_hash()}, {}, []):
                pass
        assert "\n" not in str(refused.value)
    finally:
        registry.unregister(TOP_HALF.name)
    assert ScanConfig(model="m", scores=["loss"]).scoring_hash() != ScanConfig(model="m").scoring_hash()
    with pytest.raises(InputError, match="nope is not registered; known: loss, zlib_ratio"):
        ScanConfig(model="m", scores=["nope"]).validate()


def test_a_detector_names_the_scores_its_features_lack(top_half):
    from scanner.detector.trained import TrainedDetector

    trained = ScanConfig(model="m")  # with the new score
    detector = TrainedDetector.__new__(TrainedDetector)
    detector.scan_config = trained.__dict__
    with pytest.raises(InputError, match="the trained scores top_half_logprob are not computed now"):
        detector.check_usable_with(ScanConfig(model="m", scores=registry.names()[:-1]))


def test_the_readme_lists_every_registered_score():
    listed = subprocess.run([sys.executable, "-m", "scanner.cli", "scores"], capture_output=True, text=True, check=True,
                            cwd=ROOT).stdout.strip()
    assert listed == registry.markdown_table(registry.scores())
    assert listed in (ROOT / "README.md").read_text()


def test_registering_another_score_under_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(Score("loss", higher_is_member=True, needs=("token_logprobs",), compute=lambda x: 0.0))
    with pytest.raises(ValueError, match="unknown needs"):
        registry.register(Score("x", higher_is_member=True, needs=("gradients",), compute=lambda x: 0.0))


@pytest.mark.timeout(600)
def test_a_scan_computes_the_scores_of_its_config_score_modules_on_ray(tiny_lm, ray_local, tmp_path):
    """The module named in `score_modules` is imported by the scoring actors too: the scan's rows
    carry its score, train reads it, and it adds nothing to a run that does not name it."""
    from scanner.cli import main
    from scanner.runfolder import RunFolder

    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": int(i < 6)}) + "\n"
                            for i, t in enumerate(tiny_lm["members"][:6] + tiny_lm["non_members"][:6])))
    config = tmp_path / "scan.yaml"
    config.write_text("score_modules: [tests.score_module_example]\nneighbors: 1\n")
    assert main(["scan", str(data), "--model", tiny_lm["model"], "--config", str(config), "--out", str(tmp_path / "r")]) == 0
    rows = RunFolder(str(tmp_path / "r")).features()
    assert rows["max_token_loss"].null_count() == 0 and (rows["max_token_loss"] > rows["loss"]).all()
    assert "max_token_loss" not in registry.names()  # loaded for that run, not a score of every run
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert ScanConfig(**run["config"]).score_identity()["max_token_loss"] == 1


def test_a_detector_keeps_the_scores_it_was_trained_on_when_new_ones_are_registered(tmp_path):
    """A detector folder names the scores its scan computed; one written before they were named
    (Gap-K% came later) holds the scores every run computed then: a sweep with it computes those
    and no others, with the identity those runs had, so its folders still resume."""
    from scanner.detector.folder import DetectorFolder
    from scanner.detector.trained import load_trained
    from scanner.train import train_detectors

    write_fake_run(tmp_path / "run", n=300, signal=2.0)
    train_detectors(str(tmp_path / "run"), str(tmp_path / "det"), seed=0)
    saved = tmp_path / "det" / "scan_config.json"
    pinned = json.loads(saved.read_text())["scores"]
    assert pinned == [s.name for s in registry.scores(settings=set())] and "gap_k_20" in pinned  # those it computed
    old = json.loads(saved.read_text()) | {"scores": None}  # as folders were written before
    saved.write_text(json.dumps(old))
    assert DetectorFolder(str(tmp_path / "det")).scan_config["scores"] == list(registry.BEFORE_REGISTRY)
    detector = load_trained(str(tmp_path / "det"), "tabular")
    cfg = ScanConfig(**detector.base_config())
    assert "gap_k_20" not in cfg.scores and cfg.score_identity() is None  # the old runs' identity
    detector.check_usable_with(cfg)
    with pytest.raises(InputError, match="the scores gap_k_5, .* were not computed in training"):
        detector.check_usable_with(ScanConfig(**(detector.base_config() | {"scores": None})))


@pytest.mark.timeout(600)
def test_a_scan_begun_before_a_new_default_score_resumes_with_the_scores_it_computes(tiny_lm, ray_local, tmp_path,
                                                                                     capsys):
    """A folder of an earlier version, resumed by the same command once a new default score is
    registered, goes on as the same run (its scores, its identity, no shard redone) and says which
    scores a new folder would add; naming the new score makes it another run, refused."""
    from scanner.cli import main
    from scanner.runfolder import RunFolder

    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_lm["members"][:4]))
    scan = ["scan", str(data), "--model", tiny_lm["model"], "--neighbors", "0", "--out", str(tmp_path / "r")]
    assert main(scan) == 0
    before = RunFolder(str(tmp_path / "r")).run
    registry.register(TOP_HALF)
    try:
        capsys.readouterr()
        assert main(scan) == 0
        said = capsys.readouterr()
        assert "begun by an earlier version" in said.out + said.err and "top_half_logprob" in said.out + said.err
        folder = RunFolder(str(tmp_path / "r"))
        assert folder.run["scoring_hash"] == before["scoring_hash"] and folder.run["run_id"] == before["run_id"]
        assert folder.manifest["counts"]["scored_this_invocation"] == 0
        assert "top_half_logprob" not in folder.features().columns
        config = tmp_path / "all.yaml"
        config.write_text(f"scores: [{', '.join(registry.names())}]\n")
        assert main(scan + ["--config", str(config)]) == 2  # the new score named: another run, refused
    finally:
        registry.unregister(TOP_HALF.name)
