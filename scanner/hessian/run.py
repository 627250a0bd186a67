"""`scanner hessian`: does the input-space Hessian explain the perturbation attacks on this model?

  1. Labelled samples are read and validated (the scan's readers); `--max-samples` keeps a
     stable, seeded subset. `--eigs` of them (half members where possible) also get Lanczos.
  2. The scan engine's actors (scanner.engine.ScoringPool: one per GPU, else one per node;
     restarted or replaced when they die) each load the model once and measure
     chunks of samples (scanner.hessian.curvature): loss, Hutchinson's trace and its standard
     error, the trace per token, the extreme eigenvalues where asked, and the light scan's
     scores (LOSS, zlib, Min-K%, Min-K%++) from the same forward pass. Each chunk is written to
     DIR/parts/ as it finishes; a rerun measures only the chunks not there.
  3. Beside the scan's scores (`--scan RUN`, for the neighborhood score; else the light scan's):
     AUC with 95% CI of each, the share of members and of non-members whose Hessian has a
     negative eigenvalue, the eigenvalues by label, a plain conclusion.

  DIR/run.json          the run's identity (settings, samples): another is refused (one line)
  DIR/parts/            one Parquet file per measured chunk
  DIR/samples.parquet   per sample: sample_id, label, tokens, loss, trace, trace_se,
                        trace_per_token, eig_min, eig_max, and the light scan's scores
  DIR/metrics.json, report.md, report.html
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Callable

import polars as pl

from scanner.corpus import Columns, read_corpus
from scanner.config import ScanConfig
from scanner.detector.data import member_score, split_of
from scanner.engine import ScoringPool
from scanner.errors import InputError
from scanner.lock import FolderLock
from scanner.metrics import summarize
from scanner.provenance import package_versions
from scanner.report import fmt, fmt_auc, forest_png, two_histograms_png, write_report
from scanner.runfolder import RunFolder, check_identity, save_identity
from scanner.scoring.factory import check_adapter_path, check_model_path
from scanner.scoring.stats import text_scores
from scanner.storage import Store

CHUNK = 8  # samples per actor call and per part file
COMPARED = ("neighborhood", "loss", "min_k_pp_20")  # the attacks the trace is set beside
NEGATIVE = 1e-6  # an eigenvalue below -NEGATIVE x the largest |eigenvalue| counts as negative


@dataclass(frozen=True)
class HessianSpec:
    model: str
    probes: int = 32
    eigs: int = 8
    lanczos_steps: int = 20
    max_tokens: int = 128
    max_samples: int | None = None
    seed: int = 0
    dtype: str = "float32"
    revision: str | None = None
    adapter: str | None = None  # a peft adapter (LoRA), merged into the weights at load
    trust_remote_code: bool = False
    actors: int | None = None

    def check(self) -> None:
        for name, least in (("probes", 2), ("eigs", 0), ("lanczos_steps", 2), ("max_tokens", 2)):
            if getattr(self, name) < least:
                raise InputError(f"--{name.replace('_', '-')} must be at least {least}, not {getattr(self, name)}")
        if self.max_samples is not None and self.max_samples < 2:
            raise InputError(f"--max-samples must be at least 2, not {self.max_samples}")


class CurvatureActor:
    """Holds the model (eager attention: double backward through it) and measures chunks."""

    def __init__(self, spec: HessianSpec):
        import torch

        from scanner.scoring.factory import local_model
        from scanner.scoring.hf import auto_device, load_causal_lm
        from scanner.scoring.interface import TextTokenizer

        self.spec = spec
        self.device = auto_device()
        try:
            tok, self.model = load_causal_lm(local_model(spec.model), self.device, getattr(torch, spec.dtype),
                                             spec.revision, spec.trust_remote_code, local_model(spec.adapter),
                                             attn_implementation="eager")
            self.model.requires_grad_(False)  # only the embeddings' derivatives: a smaller graph (-17% at 256 tokens)
            self.error = None
        except (OSError, ValueError) as e:
            self.error = f"cannot load model {spec.model!r}: {str(e).splitlines()[0]}"
            return
        self.tokenize = TextTokenizer(tok, spec.max_tokens)

    def ready(self) -> dict:
        import ray

        return {"error": self.error, "device": self.device, "cores": len(os.sched_getaffinity(0)),
                "node": ray.get_runtime_context().get_node_id()}

    def measure(self, chunk: int, rows: list[dict], threads: int | None) -> tuple[int, list[dict]]:
        import torch

        from scanner.hessian.curvature import measure

        if threads:
            torch.set_num_threads(threads)
        ids, truncated = self.tokenize([r["text"] for r in rows])
        out = []
        for r, row_ids, cut in zip(rows, ids, truncated):
            t0 = time.perf_counter()
            c = measure(self.model, row_ids, self.spec.probes, self.spec.lanczos_steps if r["eigs"] else None,
                        seed=r["seed"])
            out.append({"sample_id": r["sample_id"], "tokens": c.tokens, "truncated": cut, "trace": c.trace,
                        "trace_se": c.trace_se, "trace_per_token": c.trace / c.tokens, "eig_min": c.eig_min,
                        "eig_max": c.eig_max, "seconds": time.perf_counter() - t0}
                       | text_scores(r["text"], c.logprobs, c.mu, c.sigma, c.top1))
        return chunk, out


def _stable_seed(seed: int, sample_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{sample_id}".encode()).digest()[:4], "little")


def chosen_samples(samples: pl.DataFrame, spec: HessianSpec) -> pl.DataFrame:
    """A seeded, stable order of the samples (the first max_samples kept) and which get Lanczos:
    the first eigs of that order, half of them members where there are enough."""
    order = samples.with_columns(pl.col("sample_id").map_elements(lambda s: split_of(s, spec.seed),
                                                                   return_dtype=pl.Float64).alias("_order"))
    order = order.sort("_order").head(spec.max_samples or samples.height)
    members = order.filter(pl.col("label") == 1)["sample_id"].head(spec.eigs // 2 + spec.eigs % 2).to_list()
    others = order.filter(pl.col("label") == 0)["sample_id"].head(spec.eigs - len(members)).to_list()
    chosen = set(members) | set(others)
    return order.drop("_order").with_columns(pl.col("sample_id").is_in(chosen).alias("eigs"))


def identity(spec: HessianSpec, samples: pl.DataFrame) -> dict:
    """What changes the numbers: the settings (an option left unset is left out, so a new option
    keeps old runs) and the samples; the fingerprint of both is what folders before kept."""
    measured = {k: v for k, v in spec.__dict__.items() if k != "actors" and v is not None}
    h = hashlib.sha256(json.dumps(measured, sort_keys=True).encode())
    texts = hashlib.sha256()
    for sid, text in samples.select("sample_id", "text").iter_rows():
        row = f"\0{sid}\0{text}".encode()
        h.update(row)
        texts.update(row)
    return {"kind": "hessian", "fingerprint": h.hexdigest()[:16], "settings": measured,
            "samples": f"{samples.height} samples, sha256 {texts.hexdigest()[:12]}"}


def _measure_all(samples: pl.DataFrame, spec: HessianSpec, out: Store, progress) -> None:
    rows = [r | {"seed": _stable_seed(spec.seed, r["sample_id"])}
            for r in samples.select("sample_id", "text", "eigs").to_dicts()]
    chunks = [(k, rows[i:i + CHUNK]) for k, i in enumerate(range(0, len(rows), CHUNK))]
    done_before = set(out.names("parts", ".parquet"))
    todo = [(k, c) for k, c in chunks if f"{k:06d}.parquet" not in done_before]
    progress(f"{len(rows)} samples in {len(chunks)} chunks: {len(chunks) - len(todo)} done before, {len(todo)} to measure")
    if not todo:
        return
    pool = ScoringPool(ScanConfig(model=spec.model, actors=spec.actors), (spec,), progress, actor_cls=CurvatureActor,
                       reads=False)
    t0, done, total, failed = time.perf_counter(), 0, sum(len(c) for _, c in todo), []

    def save(chunk: tuple, result) -> None:
        nonlocal done
        if isinstance(result, str):  # the chunk's error
            failed.append(result)
            return
        k, measured = result
        out.write_parquet(f"parts/{k:06d}.parquet", pl.DataFrame(measured).to_arrow())  # whole or absent
        done += len(measured)
        progress(f"[{done}/{total}] {done / (time.perf_counter() - t0):.2f} samples/s")

    try:
        pool.map(todo, lambda actor, kc, threads: actor.measure.remote(kc[0], kc[1], threads), save,
                 lambda kc, error: f"chunk {kc[0]}: {error}")
    finally:
        pool.shutdown()
    if failed:  # the finished chunks stay: a rerun measures the rest
        raise InputError(f"{len(failed)} chunk(s) failed after {done} of {total} samples (run again to retry): "
                         f"{failed[0]}")


def summarize_curvature(table: pl.DataFrame, compared_from: str, n_boot: int, seed: int) -> dict:
    """AUCs of the trace scores beside the attacks', the negative-eigenvalue shares by label."""
    table = table.with_columns(pl.col("eig_min", "eig_max").cast(pl.Float64))  # all null with --eigs 0
    y = table["label"].to_numpy().astype(int)
    scores = {"trace": table["trace"].to_numpy(), "trace per token": table["trace_per_token"].to_numpy()}
    for name in COMPARED:
        if name in table.columns and table[name].null_count() == 0:
            scores[name] = member_score(table, name)
    aucs = {name: summarize(y, s, n_boot=n_boot, seed=seed) for name, s in scores.items()}
    eig = table.filter(pl.col("eig_min").is_not_null())
    negative = eig.with_columns(negative=pl.col("eig_min") < -NEGATIVE * pl.max_horizontal(
        pl.col("eig_min").abs(), pl.col("eig_max").abs()))
    shares = {label: {"n": int(g.height), "negative_eigenvalue": int(g["negative"].sum())}
              for label, g in ((name, negative.filter(pl.col("label") == v)) for name, v in (("members", 1),
                                                                                               ("non_members", 0)))}
    from scipy.stats import spearmanr

    with_loss = float(spearmanr(table["trace"].to_numpy(), table["loss"].to_numpy()).statistic)
    attack = next((n for n in COMPARED if n in aucs), None)
    said = (f"The trace of the input-space Hessian separates members at AUC {fmt_auc(aucs['trace'])} (per token "
            f"{fmt_auc(aucs['trace per token'])})")
    if attack:
        said += f" vs the {attack} score's {fmt_auc(aucs[attack])}"
    said += "."
    if eig.height:
        said += (f" The Hessian has a negative eigenvalue (is not positive semi-definite) at "
                 f"{shares['members']['negative_eigenvalue']} of {shares['members']['n']} members and "
                 f"{shares['non_members']['negative_eigenvalue']} of {shares['non_members']['n']} non-members.")
    said += f" Spearman correlation of the trace with the loss: {with_loss:.2f}."
    return {"auc": aucs, "compared_from": compared_from, "eigenvalues": shares, "conclusion": said,
            "trace_loss_spearman": with_loss,
            "n": int(len(y)), "members": int(y.sum())}


def run_hessian(data: list[str], out: str, spec: HessianSpec, columns: Columns = Columns(), scan: str | None = None,
                n_boot: int = 1000, progress: Callable[[str], None] = print) -> dict:
    import ray

    spec.check()
    check_model_path(spec.model)  # before any work, not when the actors load it
    check_adapter_path(spec.adapter)
    t0 = time.perf_counter()
    corpus = read_corpus(data, columns, progress=progress)
    samples = chosen_samples(corpus.labelled(), spec)
    if samples["label"].n_unique() < 2:
        raise InputError("the Hessian's AUCs need labelled members (1) and non-members (0)")
    scan_scores = _scan_scores(scan, samples) if scan else None
    out_, ident = Store(str(out)), identity(spec, samples)
    with FolderLock(out_, "hessian"):
        check_identity(out_, ident)
        save_identity(out_, ident, spec=spec.__dict__)
        if not ray.is_initialized():
            ray.init()
        _measure_all(samples, spec, out_, progress)
        return _summarize(samples, spec, out_, corpus, scan, scan_scores, n_boot, t0)


def _summarize(samples, spec, out_: Store, corpus, scan, scan_scores, n_boot, t0) -> dict:
    measured = pl.concat([pl.from_arrow(out_.read_parquet(f"parts/{name}")) for name in out_.names("parts", ".parquet")],
                         how="diagonal_relaxed")
    table = samples.select("sample_id", "label", "source").join(measured, on="sample_id", how="left")
    if scan_scores is not None:
        table = table.drop([c for c in scan_scores.columns if c != "sample_id" and c in table.columns]).join(
            scan_scores, on="sample_id", how="left")
    out_.write_parquet("samples.parquet", table.to_arrow())
    metrics = summarize_curvature(table, f"the scan {scan}" if scan else "this command's forward passes (no "
                                  "neighbors: give --scan RUN for the neighborhood score)", n_boot, spec.seed)
    metrics |= {"task": "hessian", "model": spec.model, "settings": spec.__dict__, "inputs": corpus.files,
                "corpus": corpus.counts, "tokens": {"mean": float(table["tokens"].mean()),
                                                   "truncated": int(table["truncated"].sum())},
                "seconds_per_sample": float(table["seconds"].mean()), "wall_seconds": time.perf_counter() - t0,
                "versions": package_versions()}
    write_report(out_, "The Hessian explanation of perturbation attacks, tested", _blocks(metrics, table), metrics)
    return metrics


def _scan_scores(scan: str, samples: pl.DataFrame) -> pl.DataFrame:
    """The compared attacks' scores from a scan run, for every chosen sample."""
    features = RunFolder.existing(scan).features()
    names = [n for n in COMPARED if n in features.columns]
    got = samples.select("sample_id").join(features.select("sample_id", *names), on="sample_id", how="left")
    missing = got.filter(pl.any_horizontal(pl.col(names).is_null())).height if names else got.height
    if missing:
        raise InputError(f"the scan {scan} lacks scores for {missing} of the {got.height} samples: scan the same data")
    return got


def _blocks(m: dict, table: pl.DataFrame) -> list:
    a, e, s = m["auc"], m["eigenvalues"], m["settings"]
    blocks = [("p", f"**{m['conclusion']}**"),
              ("img", "headline_auc.png", forest_png(
                  {name: (r["auc"], *r["auc_ci"]) for name, r in a.items()},
                  "Members told from non-members", xlabel="AUC (95% interval; higher score = member)", line=0.5,
                  line_label="chance", xlim=(0.0, 1.0))),
              ("p", f"Model {m['model']}; {m['n']} samples ({m['members']} members), at most {s['max_tokens']} tokens "
                    f"each (mean {m['tokens']['mean']:.0f}, {m['tokens']['truncated']} cut). L(e) is the mean next-token "
                    f"loss as a function of the text's input embeddings; tr(H) is Hutchinson's estimate from "
                    f"{s['probes']} Rademacher probes (Hessian-vector products by double backward), the extreme "
                    f"eigenvalues Lanczos's after {s['lanczos_steps']} steps on {s['eigs']} samples. The attacks' "
                    f"scores come from {m['compared_from']}."),
              ("h2", "AUC of each score"),
              ("table", ["score", "AUC [95% CI]"], [[n, fmt_auc(r)] for n, r in a.items()]),
              ("h2", "Is the Hessian positive semi-definite at the samples?"),
              ("table", ["samples", "with Lanczos", "with a negative eigenvalue"],
               [[k.replace("_", "-"), v["n"], v["negative_eigenvalue"]] for k, v in e.items()])]
    eig = table.filter(pl.col("eig_min").is_not_null())
    if eig.height:
        for which, label in (("min", "smallest"), ("max", "largest")):
            blocks.append(("img", f"eig_{which}.png", two_histograms_png(
                {k: eig.filter(pl.col("label") == v)[f"eig_{which}"].to_list()
                 for k, v in (("members", 1), ("non-members", 0))}, f"{label} eigenvalue of H (Lanczos)")))
    blocks += [("img", "trace.png", two_histograms_png(
                   {k: table.filter(pl.col("label") == v)["trace_per_token"].to_list()
                    for k, v in (("members", 1), ("non-members", 0))}, "trace of H per token")),
               ("p", f"Mean relative standard error of the trace estimates: "
                     f"{fmt(float((table['trace_se'] / table['trace'].abs()).mean()))}; "
                     f"{m['seconds_per_sample']:.2f} s per sample.")]
    return blocks
