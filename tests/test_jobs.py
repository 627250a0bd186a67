import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_job(*args):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray, started by the job
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "baseline.py"), *args], capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_baseline_job_runs_as_a_ray_task_and_writes_the_report(tmp_path):
    data = str(ROOT / "scanner" / "data" / "wikimia_128.jsonl")
    res = run_job(data, "--out", str(tmp_path / "out"), "--n-boot", "200")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "baseline_task" in res.stdout + res.stderr  # progress came from inside the Ray task
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["auc"] >= 0.98 and m["verdict"]["status"] == "leaky"
    assert (tmp_path / "out" / "report.html").exists()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_baseline_job_reports_bad_input_with_exit_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 3}\n')
    res = run_job(str(bad), "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert "bad.jsonl row 1" in res.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("job, args, message", [
    ("nightly.py", ["--config", "{tmp}/nightly.yaml", "--out", "{tmp}/nights"], "needs `detector:`"),
    ("sweep.py", ["{tmp}/nightly.yaml", "--detector", "{tmp}/no-detector", "--out", "{tmp}/sweep"],
     "not a `scanner train` output folder"),
    ("infer.py", ["{tmp}/nightly.yaml", "--reference", "{tmp}/nightly.yaml", "--model", "{tmp}/no-model", "--out",
                  "{tmp}/infer"], "no-model: no such folder"),
    ("frequencies.py", ["{tmp}/nightly.yaml", "--model", "{tmp}/no-model", "--out", "{tmp}/freq"],
     "no-model: no such folder"),
])
def test_sweep_and_nightly_jobs_exit_2_on_bad_input(tmp_path, job, args, message):
    (tmp_path / "nightly.yaml").write_text("eval_sets: [{name: a, data: x.jsonl}]\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run([sys.executable, str(ROOT / "jobs" / job), *[a.format(tmp=tmp_path) for a in args]],
                         capture_output=True, text=True, timeout=100, env=env)
    assert res.returncode == 2 and message in res.stderr, res.stderr[-2000:]
