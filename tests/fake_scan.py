"""A scan run folder with synthetic features (no model), for fast detector and report tests. The
built-in scores get hand-set values with a known signal; any other registered score is computed
by the registry from the row's synthetic log-probs, so a new score shows up here with no edit."""

from dataclasses import asdict

import numpy as np
import pyarrow as pa

from scanner.config import ScanConfig
from scanner.features import feature_schema
from scanner.runfolder import RunFolder
from scanner.scoring import registry


def write_fake_run(run_dir, n=600, k=6, proj=4, seed=0, signal=1.0, shift_text=False, labelled=True):
    """Members have lower loss and larger neighbor loss gaps (by `signal` standard deviations).
    With shift_text, member texts also mention older years than non-members (a leaky split)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    loss = rng.normal(3.5 - 0.3 * signal * y, 0.3)
    dl = rng.normal((0.1 + 0.25 * signal * y)[:, None], 0.2, (n, k))
    de = rng.normal(0.2 * signal * y[:, None, None], 1.0, (n, k, proj))
    words = "river city market school music science garden station bridge council".split()
    rows, logprobs = [], []
    for i in range(n):
        lp = -rng.gamma(2.0, loss[i] / 2.0, 40)
        logprobs.append(lp)
        row = {"sample_id": f"s{i:05d}", "label": int(y[i]) if labelled else None, "source": ["web", "books"][i % 2],
               "file": "fake.jsonl", "row": i + 1, "shard": "fake-00000", "n_tokens": int(rng.integers(20, 300)),
               "truncated": False, "loss": float(loss[i]), "zlib_ratio": float(loss[i] / 50),
               "neighborhood": float(-dl[i].mean()), "nb_kinds": ["delete"] * k,
               "nb_loss": (loss[i] + dl[i]).tolist(), "nb_dL": dl[i].tolist(),
               "nb_cos_dist": np.abs(rng.normal(0.01, 0.005, k)).tolist(), "nb_l2": np.abs(rng.normal(1, 0.1, k)).tolist(),
               "nb_de_proj": de[i].ravel().tolist(), "nb_tokens": 40 * k}
        for q in (5, 10, 20, 30, 50):
            row[f"min_k_{q}"] = float(np.sort(lp)[: max(1, int(40 * q / 100))].mean())
            row[f"min_k_pp_{q}"] = row[f"min_k_{q}"] / 2
        rows.append(row)
    for i, row in enumerate(rows):  # after the features: the same random draws as before texts joined them
        year = (rng.integers(1990, 2012) if y[i] else rng.integers(2022, 2025)) if shift_text else rng.integers(1990, 2025)
        row["text"] = f"In {year} the " + " ".join(rng.choice(words, 20))
        inputs = registry.ScoreInputs(row["text"], logprobs[i], np.full(40, logprobs[i].mean()), np.full(40, logprobs[i].std()),
                                      np.array(row["nb_loss"]), np.full(40, logprobs[i].max()))
        row |= {name: value for name, value in registry.compute(inputs).items() if name not in row}
    schema = feature_schema().append(pa.field("text", pa.string()))
    cfg = ScanConfig(model="fake-model", neighbors=k, proj_dim=proj)
    folder = RunFolder(run_dir)
    counts = {"read": n, "scored": n, "quarantined": 0, "quarantined_by_reason": {}}
    with folder.claim({"kind": "scan", "scoring_hash": cfg.scoring_hash()}, asdict(cfg), []):
        folder.finish_shard("fake-00000", pa.Table.from_pylist(rows, schema=schema),
                            {"shard": "fake-00000", "counts": counts, "tokens": 0, "per_source": {}})
    return y
