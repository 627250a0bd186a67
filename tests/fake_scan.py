"""A scan run folder with synthetic features (no model), for fast detector and report tests."""

import json
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scanner.config import ScanConfig
from scanner.features import FEATURE_SCHEMA


def write_fake_run(run_dir, n=600, k=6, proj=4, seed=0, signal=1.0, shift_text=False):
    """Members have lower loss and larger neighbor loss gaps (by `signal` standard deviations).
    With shift_text, member texts also mention older years than non-members (a leaky split)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    loss = rng.normal(3.5 - 0.3 * signal * y, 0.3)
    dl = rng.normal((0.1 + 0.25 * signal * y)[:, None], 0.2, (n, k))
    de = rng.normal(0.2 * signal * y[:, None, None], 1.0, (n, k, proj))
    rows = []
    for i in range(n):
        lp = -rng.gamma(2.0, loss[i] / 2.0, 40)
        row = {"sample_id": f"s{i:05d}", "label": int(y[i]), "source": ["web", "books"][i % 2],
               "shard": "input-00000.parquet", "n_tokens": int(rng.integers(20, 300)), "truncated": False,
               "loss": float(loss[i]), "zlib_ratio": float(loss[i] / 50),
               "neighborhood": float(-dl[i].mean()), "nb_kinds": ["delete"] * k,
               "nb_loss": (loss[i] + dl[i]).tolist(), "nb_dL": dl[i].tolist(),
               "nb_cos_dist": np.abs(rng.normal(0.01, 0.005, k)).tolist(), "nb_l2": np.abs(rng.normal(1, 0.1, k)).tolist(),
               "nb_de_proj": de[i].ravel().tolist(), "nb_tokens": 40 * k}
        for q in (5, 10, 20, 30, 50):
            row[f"min_k_{q}"] = float(np.sort(lp)[: max(1, int(40 * q / 100))].mean())
            row[f"min_k_pp_{q}"] = row[f"min_k_{q}"] / 2
        rows.append(row)
    (run_dir / "features").mkdir(parents=True, exist_ok=True)
    (run_dir / "shards").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=FEATURE_SCHEMA), run_dir / "features" / "part-00000.parquet")
    words = "river city market school music science garden station bridge council".split()
    texts = []
    for i in range(n):
        year = (rng.integers(1990, 2012) if y[i] else rng.integers(2022, 2025)) if shift_text else rng.integers(1990, 2025)
        texts.append(f"In {year} the " + " ".join(rng.choice(words, 20)))
    pq.write_table(pa.table({"sample_id": [r["sample_id"] for r in rows], "text": texts}),
                   run_dir / "shards" / "input-00000.parquet")
    cfg = ScanConfig(model="fake-model", neighbors=k, proj_dim=proj)
    (run_dir / "run.json").write_text(json.dumps({"run_id": "fake", "scoring_hash": cfg.scoring_hash(),
                                                  "config": asdict(cfg)}))
    return y
