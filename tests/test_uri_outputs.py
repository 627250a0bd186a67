"""Every command's --out as a URI. Each but the demo writes to an S3 object store (moto's
server on loopback, reached through pyarrow's S3FileSystem: no rename, an object appears when its
upload ends, and the Ray workers reach it over HTTP as they would a real bucket); each also writes
to a file:// URI (the demo's own test runs through one). Inputs stay local files: only where
results go changes."""

import json
import logging
import os
from pathlib import Path

import polars as pl
import pytest

from scanner.cli import main
from scanner.storage import Store
from scanner.toy import english_passages

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """uri(path): an s3:// URI in a bucket of a local object store. Its credentials and a node
    cache are in the environment before Ray starts, so that every worker has them."""
    server_module = pytest.importorskip("moto.server")
    env = {"AWS_ACCESS_KEY_ID": "scanner-test", "AWS_SECRET_ACCESS_KEY": "scanner-test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "SCANNER_CACHE": str(tmp_path_factory.mktemp("node-cache"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()

    def uri(path: str) -> str:
        return f"s3://scanner-test/{path}?endpoint_override={host}:{port}&scheme=http&allow_bucket_creation=true"

    yield uri
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def jsonl(path, texts, **columns) -> str:
    path.write_text("".join(json.dumps({"text": t} | {k: v[i] for k, v in columns.items()}) + "\n"
                            for i, t in enumerate(texts)))
    return str(path)


@pytest.fixture(scope="module")
def scanned(s3, ray_local, tiny_lm, tmp_path_factory):
    """A labelled scan and its detectors, both in the object store."""
    root = tmp_path_factory.mktemp("uri")
    texts = tiny_lm["members"][:60] + tiny_lm["non_members"][:60]
    labelled = jsonl(root / "labelled.jsonl", texts, label=[1] * 60 + [0] * 60)
    scan, detector = s3("scan"), s3("detector")
    assert main(["scan", labelled, "--model", tiny_lm["model"], "--out", scan, "--neighbors", "2",
                 "--label-col", "label"]) == 0
    assert main(["train", scan, "--out", detector]) == 0
    return {"root": root, "labelled": labelled, "scan": scan, "detector": detector}


def test_scan_and_train_write_to_an_object_store_and_a_rerun_resumes(scanned, tiny_lm, capsys):
    scan, detector = Store(scanned["scan"], create=False), Store(scanned["detector"], create=False)
    assert scan.exists("run.json") and scan.exists("manifest.json") and scan.names("features", ".parquet")
    assert {"fimmia.json", "tabular.json", "split.json", "scan_config.json"} <= set(detector.names(""))
    capsys.readouterr()
    assert main(["scan", scanned["labelled"], "--model", tiny_lm["model"], "--out", scanned["scan"],
                 "--neighbors", "2", "--label-col", "label"]) == 0
    assert "0 to score" in capsys.readouterr().err


def test_evaluate_reads_uris_and_writes_a_file_uri_or_to_the_object_store(scanned, s3):
    out = scanned["root"] / "evaluate"
    assert main(["evaluate", scanned["scan"], "--detector", scanned["detector"],
                 "--out", f"file://{out}"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["scores"]["loss"]["auc"] > 0.7 and (out / "report.html").is_file()
    assert main(["evaluate", scanned["scan"], "--detector", scanned["detector"], "--out", s3("evaluate")]) == 0
    assert Store(s3("evaluate"), create=False).read_json("metrics.json")["scores"]["loss"] == m["scores"]["loss"]


def test_baseline_writes_to_the_object_store(scanned, s3):
    assert main(["baseline", scanned["labelled"], "--out", s3("baseline"), "--n-boot", "50"]) == 0
    out = Store(s3("baseline"), create=False)
    assert {"metrics.json", "report.html", "scores.parquet", "quarantine.parquet"} <= set(out.names(""))
    assert out.read_json("metrics.json")["verdict"]["status"]


def test_infer_and_sweep_write_to_the_object_store(scanned, s3, tiny_lm):
    root = scanned["root"]
    suspect = jsonl(root / "suspect.jsonl", tiny_lm["members"][60:100])
    reference = jsonl(root / "reference.jsonl", tiny_lm["non_members"][60:100])
    assert main(["infer", suspect, "--reference", reference, "--model", tiny_lm["model"], "--out", s3("infer"),
                 "--neighbors", "0"]) in (0, 1)
    infer = Store(s3("infer"), create=False)
    assert infer.read_json("metrics.json")["p_value"] is not None
    assert infer.folders() == ["reference", "suspect"]
    assert main(["sweep", suspect, "--detector", scanned["detector"], "--out", s3("sweep")]) == 0
    assert Store(s3("sweep"), create=False).read_json("metrics.json")["overall"]["n"] == 40


def test_nightly_finds_the_previous_run_in_the_object_store(scanned, s3, tiny_lm):
    import yaml

    root = scanned["root"]
    unseen = jsonl(root / "unseen.jsonl", tiny_lm["non_members"][100:130])
    config = root / "nightly.yaml"
    config.write_text(yaml.safe_dump({"detector": scanned["detector"], "actors": 1,
                                      "eval_sets": [{"name": "eval_a", "data": [unseen]}]}))
    for run in ("n1", "n2"):
        assert main(["nightly", "--config", str(config), "--out", s3("nights"), "--run-name", run]) == 0
    nights = Store(s3("nights"), create=False)
    m = nights.read_json("n2/metrics.json")
    assert m["previous"] == nights.uri_of("n1/metrics.json") and [p["run"] for p in m["trend"]["eval_a"]] == ["n1", "n2"]
    assert nights.exists("n2/report.html") and nights.exists("n2/sets/eval_a/scan/run.json")


def test_overlap_and_hessian_write_to_the_object_store(scanned, s3, tiny_lm):
    root = scanned["root"]
    corpus = jsonl(root / "corpus.jsonl", tiny_lm["members"][:30])
    assert main(["overlap", scanned["labelled"], "--corpus", corpus, "--out", s3("overlap")]) == 0
    items = pl.from_arrow(Store(s3("overlap"), create=False).read_parquet("items.parquet"))
    assert (items["coverage"] == 1.0).sum() == 30
    assert main(["hessian", scanned["labelled"], "--model", tiny_lm["model"], "--out", s3("hessian"), "--probes", "2",
                 "--eigs", "0", "--max-samples", "12", "--label-col", "label"]) == 0
    hessian = Store(s3("hessian"), create=False)
    assert hessian.exists("samples.parquet") and len(hessian.names("parts", ".parquet")) >= 1


def test_calibrate_fine_tunes_into_the_object_store_and_its_scans_load_the_copy_from_there(s3, ray_local, tmp_path,
                                                                                              capsys):
    from tests.conftest import tiny_gpt2

    tiny_gpt2(tmp_path / "base")
    heldout = jsonl(tmp_path / "heldout.jsonl", english_passages()[:120], id=[f"h{i}" for i in range(120)])
    args = ["calibrate", heldout, "--model", str(tmp_path / "base"), "--out", s3("cal"), "--method", "lora",
            "--exposures", "1,2", "--lr", "1e-3"]
    assert main(args) == 0
    cal = Store(s3("cal"), create=False)
    assert cal.exists("finetune/model/adapter_config.json") and cal.exists("finetune/log.json")
    assert not cal.has_folder("finetune/checkpoint")
    assert cal.read_json("detector/calibration.json")["tuned_model"] == cal.uri_of("finetune/model")
    assert cal.read_json("scan/run.json")["config"]["adapter"] == cal.uri_of("finetune/model")
    assert cal.exists("report.html") and cal.read_json("metrics.json")["transfer"]["detectors"]
    capsys.readouterr()
    assert main(args) == 0  # resumes: no fine-tune, no scoring
    err = capsys.readouterr().err
    assert "(done before)" in err and "scored again" not in err


def test_a_killed_finetune_resumes_from_the_checkpoint_it_left_in_the_object_store(s3, tmp_path):
    from dataclasses import asdict

    import numpy as np

    from scanner.calibrate.finetune import FinetuneSpec, finetune
    from scanner.calibrate.split import training_stream
    from tests.conftest import tiny_gpt2
    from tests.test_calibrate import _finetune_in_subprocess

    tiny_gpt2(tmp_path / "base")
    texts = english_passages()[:12]
    stream = training_stream([1, 2, 3] * 4, epochs=1, seed=0)
    spec = asdict(FinetuneSpec(model=str(tmp_path / "base"), method="lora", lr=1e-3, batch_size=4,
                               checkpoint_every=3, max_length=64).validate())
    whole = finetune(spec, texts, stream, str(tmp_path / "whole"))
    flag = tmp_path / "killed"
    env = os.environ | {"SCANNER_FAULT": f"finetune_checkpoint:1:{flag}",
                        "SCANNER_CACHE": str(tmp_path / "first-node")}
    killed = _finetune_in_subprocess(spec, texts, stream, s3("ft"), env)
    assert killed.returncode == 1 and flag.exists()  # died right after the checkpoint at step 3
    store = Store(s3("ft"), create=False)
    assert store.read_json("checkpoint/state.json")["step"] == 3 and not store.exists("log.json")
    os.environ["SCANNER_CACHE"], before = str(tmp_path / "second-node"), os.environ["SCANNER_CACHE"]
    try:  # another node: nothing of the first one's working folder, only the store
        resumed = finetune(spec, texts, stream, s3("ft"))
    finally:
        os.environ["SCANNER_CACHE"] = before
    assert resumed["resumed_from"] == 3
    np.testing.assert_allclose(resumed["losses"], whole["losses"], rtol=1e-4)
    assert store.exists("model/adapter_model.safetensors") and not store.has_folder("checkpoint")


def test_every_command_takes_a_file_uri(scanned, tiny_lm, tmp_path):
    """The same commands with --out file://...: pyarrow's local filesystem reached through a URI
    (the S3 tests above take the object-store path; here the URI's parsing on a local disk)."""
    import yaml

    root = scanned["root"]

    def uri(name: str) -> str:
        return f"file://{tmp_path / name}"

    suspect = jsonl(tmp_path / "suspect.jsonl", tiny_lm["members"][60:90])
    reference = jsonl(tmp_path / "reference.jsonl", tiny_lm["non_members"][60:90])
    commands = {
        "scan": ["scan", scanned["labelled"], "--model", tiny_lm["model"], "--out", uri("scan"), "--neighbors", "2"],
        "train": ["train", uri("scan"), "--out", uri("detector")],
        "baseline": ["baseline", scanned["labelled"], "--out", uri("baseline"), "--n-boot", "50"],
        "sweep": ["sweep", suspect, "--detector", uri("detector"), "--out", uri("sweep")],
        "infer": ["infer", suspect, "--reference", reference, "--model", tiny_lm["model"], "--out", uri("infer"),
                  "--neighbors", "0"],
        "overlap": ["overlap", scanned["labelled"], "--corpus", suspect, "--out", uri("overlap")],
        "hessian": ["hessian", scanned["labelled"], "--model", tiny_lm["model"], "--out", uri("hessian"),
                    "--probes", "2", "--eigs", "0", "--max-samples", "8"],
    }
    for name, args in commands.items():
        assert main(args) in (0, 1), name  # (infer: 1 = seen)
        out = Path(args[args.index("--out") + 1].removeprefix("file://"))
        assert (out / {"scan": "manifest.json", "train": "fimmia.json"}.get(name, "metrics.json")).is_file(), name
    config = tmp_path / "nightly.yaml"
    config.write_text(yaml.safe_dump({"detector": uri("detector"), "actors": 1,
                                      "eval_sets": [{"name": "a", "data": [reference]}]}))
    assert main(["nightly", "--config", str(config), "--out", uri("nights"), "--run-name", "n1"]) == 0
    assert (tmp_path / "nights" / "n1" / "report.html").is_file()
    heldout = jsonl(root / "heldout_file.jsonl", english_passages()[:120], id=[f"h{i}" for i in range(120)])
    from tests.conftest import tiny_gpt2

    tiny_gpt2(tmp_path / "base")
    assert main(["calibrate", heldout, "--model", str(tmp_path / "base"), "--out", uri("cal"), "--method", "full",
                 "--exposures", "1,2", "--lr", "1e-3"]) == 0
    calibration = json.loads((tmp_path / "cal" / "detector" / "calibration.json").read_text())
    assert calibration["tuned_model"] == uri("cal/finetune/model")
