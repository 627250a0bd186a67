"""`scanner sweep`: which documents of a corpus did the model see, and how much of each source?

A run of the engine (scanner.engine) whose scoring actors also apply a trained detector: every
input file is cut into shards of at most shard_size rows, read where Ray places the read task
(local disk, shared mount or any URI pyarrow or fsspec can open), scored, and written with
`member_prob` and `flagged` by the worker that scored it. The output folder (layout:
scanner.runfolder; on a multi-node cluster, storage every node can reach) then gets the
per-source contaminated fraction, corrected for the detector's TPR and FPR
(scanner.contamination), computed from the shards' completion records alone.

A corpus too big to score is sampled (scanner.sampling: --sample-rate, --sample, --shard-rate):
unsampled documents are read and counted, never perturbed or scored; files a first stage leaves
out are never read. The estimates then carry the design's uncertainty (scanner.design) beside
the detector's, for each source and for the corpus, weighted by the sources' sizes.

Texts are not copied into the output (a corpus sweep must not duplicate its corpus): rows carry
sample_id, source, file and row. Duplicate ids are caught within a shard only. An unreadable
input file fails its own shards; the others go on, and the exit code says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from scanner.config import ScanConfig
from scanner.contamination import sampled_fraction
from scanner.design import Unit, flag_rates
from scanner.detector.trained import TrainedDetector, calibration_note
from scanner.engine import RunKind, run_shards
from scanner.report import exposure_sentence, fmt, fmt_fraction, forest_png, fraction_rows, render_report
from scanner.runfolder import RunFolder
from scanner.sampling import Sampling
from scanner.transfer import (Transfer, exposure_points, operating_point_sentence, transfer_warning,
                              transferred_detector)


def run_sweep(inputs: list[str], out: str, detector: TrainedDetector, cfg: ScanConfig, accept_shift: bool = False,
              progress: Callable[[str], None] = print, add: bool | None = None,
              sampling: Sampling | None = None) -> dict:
    """accept_shift: estimate even when a calibrated detector does not transfer to cfg's model
    (scanner.transfer); the report's first sentence then says so. add: input files the
    run in `out` lacks join it. sampling: score a sample of the corpus (scanner.sampling)."""
    detector.check_usable_with(cfg)
    detector, transfer = transferred_detector(detector, cfg, str(out).rstrip("/") + "/transfer", accept_shift, progress)
    kind = RunKind("sweep", keep_text=False, dedupe=False, strict=False, detector=detector.spec, sampling=sampling)
    manifest = run_shards(inputs, out, cfg, kind, progress, add)
    metrics = sweep_metrics(manifest, detector, cfg, transfer)
    RunFolder(out).write_files(render_report("Contamination sweep", sweep_blocks(metrics, manifest["shards"]), metrics))
    return metrics


def sweep_metrics(manifest: dict, detector: TrainedDetector, cfg: ScanConfig, transfer: Transfer | None = None) -> dict:
    """Per-source contaminated fractions over every finished shard of the inputs, with the
    detector's operating point under cfg's model where it was measured there (transfer)."""
    op = transfer.operating_point if transfer else detector.operating_point
    by_exposure = exposure_points(detector, op.fp, op.n_neg)
    sampling = manifest.get("sampling")
    shard_rate = sampling["shard_rate"] if sampling else 1.0
    rates, corpus = flag_rates(units_of(manifest), shard_rate, sources_within_files=cfg.source_col is None)
    c = manifest["counts"]
    return {
        "detector": {"kind": detector.kind, "name": detector.name, "fingerprint": detector.fingerprint, "threshold": detector.threshold,
                     "operating_point": asdict(op) | {"tpr": op.tpr, "fpr": op.fpr},
                     "trained_on_model": detector.scan_config["model"], "calibration": detector.calibration},
        "transfer": transfer and transfer.to_dict(),
        "model": cfg.model,
        "model_differs_from_training": cfg.model != detector.scan_config["model"],
        "overall": sampled_fraction(corpus, op, by_exposure) if corpus else None,
        "sources": {s: sampled_fraction(r, op, by_exposure) for s, r in rates.items()},
        "sampling": sampling and {**sampling, "files_read": len(sampling["files_read"]),
                                  "files": len(manifest["inputs"])},
        "bytes": {"inputs": manifest["bytes"]["inputs"], "read": manifest["bytes"]["read_by_shards"]},
        "counts": {k: c[k] for k in ("read", "scored", "quarantined", "unsampled")},
        "shards": {"done": c["shards_done"], "skipped": c["shards_skipped"], "failed": c["shards_failed"]},
        "scored_on_nodes": manifest["scored_on_nodes"], "wall_seconds": manifest["wall_seconds"],
        "versions": manifest["versions"],
    }


def units_of(manifest: dict) -> list[Unit]:
    """The sampling design's units, the input files: what each one's finished shards gave per
    source, and whether it was read at all."""
    read = set(manifest["sampling"]["files_read"]) if manifest.get("sampling") else set(manifest["inputs"])
    sources: dict[str, dict[str, list[int]]] = {uri: {} for uri in manifest["inputs"]}
    for e in manifest["shards"]:
        for s, counts in e.get("sources", {}).items():
            sources[e["uri"]][s] = [a + b for a, b in zip(sources[e["uri"]].get(s, [0, 0, 0]), counts)]
    return [Unit(bytes=manifest["bytes"]["per_file"][uri], picked=uri in read,
                 sources={s: tuple(v) for s, v in sources[uri].items()}) for uri in manifest["inputs"]]


def sweep_headline(m: dict) -> str:
    o = m["overall"]
    if not o or not o["estimable"]:
        return "No estimate: the detector's operating point cannot tell seen from unseen documents."
    top = max((s for s, e in m["sources"].items() if e["estimable"]), key=lambda s: m["sources"][s]["estimate"],
              default=None)
    said = f"The model saw an estimated {fmt_fraction(o)} of the {documents(o)} documents"
    if top is not None and len(m["sources"]) > 1:
        said += f"; the most seen source is {top} at {fmt_fraction(m['sources'][top])}"
    return said + "."


def documents(e: dict) -> str:
    """A group's documents: counted, or estimated from bytes with its interval."""
    if e.get("documents_ci"):
        lo, hi = e["documents_ci"]
        return f"~{e['documents']:,.0f} [{lo:,.0f}, {hi:,.0f}]"
    return f"{e['documents']:,.0f}"


def sampling_sentences(m: dict) -> list[str]:
    """What a sampled sweep read and scored, and what limits its corpus interval."""
    s, o = m["sampling"], m["overall"]
    said = [f"Sampled sweep (seed {s['seed']}): documents scored at rate {fmt(s['rate'])}"
            + (f" (a target of {s['target']:,})" if s.get("target") else "")
            + (f", in {s['files_read']} of {s['files']} input files picked at rate {fmt(s['shard_rate'])} "
               f"({m['bytes']['read']:,} of {m['bytes']['inputs']:,} input bytes read; the other files were never "
               "opened, so the corpus's document count is estimated from bytes)" if s["shard_rate"] < 1 else "")
            + f": {m['counts']['scored']:,} scored, {m['counts']['unsampled']:,} read but not in the sample. "
            "Each interval holds the sample's uncertainty and the detector's."]
    u = o and o.get("uncertainty")
    if u:
        halve = (f"about {u['more_documents_to_halve']:,} more scored documents would halve it"
                 + (" (from more files read, at the same document rate)" if s["shard_rate"] < 1 else "")
                 if u["more_documents_to_halve"] is not None else
                 "more documents cannot halve it: label more calibration samples for the detector")
        said.append(f"The corpus interval is dominated by the {u['dominant']} ({u['documents_share']:.0%} of its "
                    f"variance from the documents scored, {u['detector_share']:.0%} from the detector's calibration "
                    f"counts); {halve}.")
    return said


def sweep_blocks(m: dict, shards: list[dict]) -> list:
    op, transfer = m["detector"]["operating_point"], m.get("transfer")
    shown = {**m["sources"], **({"all": m["overall"]} if m["overall"] else {})}
    headline = sweep_headline(m)
    if transfer and not transfer["transfers"]:
        headline = f"{transfer_warning(transfer)} {headline}"
    blocks = [("p", f"**{headline}**"),
              ("img", "headline_fractions.png", forest_png(
                  fraction_rows(shown), "Estimated fraction of each source the model saw",
                  marks={s: e["flag_rate"] for s, e in shown.items()}, marks_label="flag rate (uncorrected)")),
              ("p", f"Model {m['model']}; {m['detector']['name']} detector, threshold {fmt(m['detector']['threshold'])}. "
                    + operating_point_sentence(op, transfer))]
    if m["sampling"]:
        blocks += [("p", said) for said in sampling_sentences(m)]
    if m["detector"]["calibration"]:
        blocks.append(("p", calibration_note(m["detector"]["calibration"], transfer)))
    if exposure_sentence(m["overall"]):
        blocks.append(("p", exposure_sentence(m["overall"])))
    if m["model_differs_from_training"]:
        blocks.append(("p", f"Caveat: the detector was trained on features of {m['detector']['trained_on_model']}; "
                            "its TPR and FPR are assumed to carry over to this model."))
    blocks += [("h2", "Contaminated fraction by source"),
               ("p", "Estimated fraction of documents the model saw: the flag rate corrected for the detector's "
                     "TPR and FPR (Rogan-Gladen), with a 95% interval that includes their uncertainty."),
               ("table", ["source", "documents", "scored", "flagged", "flag rate", "estimated fraction [95% CI]"],
                [[s, documents(e), e["n"], e["flagged"], fmt(e["flag_rate"]), fmt_fraction(e)]
                 for s, e in shown.items()])]
    blocks += [("h2", "Shards"),
               ("p", f"{m['shards']['done']} scored in this run, {m['shards']['skipped']} done before, "
                     f"{m['shards']['failed']} failed. Rows: {m['counts']['read']} read, {m['counts']['scored']} "
                     f"scored, {m['counts']['quarantined']} quarantined (see quarantine/).")]
    failed = [[e["uri"], e["error"]] for e in shards if e["state"] == "failed"]
    if failed:
        blocks.append(("table", ["failed shard", "error"], failed))
    return blocks
