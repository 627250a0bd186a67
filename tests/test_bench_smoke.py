"""The GPU benchmark script is prepared here, run once on a lent GPU: check it runs (tiny preset, CPU)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_gpu_scoring_core_bench_runs_on_the_tiny_preset(tmp_path):
    out = tmp_path / "r.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_scoring_core.py"), "--preset", "tiny", "--samples",
                          "2", "--tokens", "64", "--neighbors", "2", "--budgets", "512", "--out", str(out)],
                         capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["tokens"] == 2 * 3 * 64 and r["matmul_tflops"] > 0
    row = r["rows"][0]
    assert row["raw_tokens_per_s"] > 0 and row["core_tokens_per_s"] > 0 and row["core_fraction_of_matmul"] > 0


@pytest.mark.timeout(300)
def test_baseline_bench_runs_on_a_small_corpus(tmp_path):
    """bench/baseline_throughput.py imported a CLI function that no longer existed: the figure the
    README quotes could not be reproduced. Run it small so that it keeps running."""
    out = tmp_path / "r.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "baseline_throughput.py"), "--docs", "600",
                          "--out", str(tmp_path / "b"), "--json", str(out)], capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["docs"] == 600 and r["auc"] > 0.55 and len(r["chosen"]) == 5  # the mild topic shift is found (0.62 here)
