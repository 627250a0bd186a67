"""`scanner sweep`: which documents of a corpus did the model see, and how much of each source?

A run of the engine (scanner.engine) whose scoring actors also apply a trained detector: every
input file is cut into shards of at most shard_size rows, read where Ray places the read task
(local disk, shared mount or any URI pyarrow or fsspec can open), scored, and written with
`member_prob` and `flagged` by the worker that scored it. The output folder (layout:
scanner.runfolder; on a multi-node cluster, storage every node can reach) then gets the
per-source contaminated fraction, corrected for the detector's TPR and FPR
(scanner.contamination), computed from the shards' completion records alone.

Texts are not copied into the output (a corpus sweep must not duplicate its corpus): rows carry
sample_id, source, file and row. Duplicate ids are caught within a shard only. An unreadable
input file fails its own shards; the others go on, and the exit code says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from scanner.config import ScanConfig
from scanner.contamination import fraction_over_exposures
from scanner.detector.trained import TrainedDetector, calibration_note
from scanner.engine import RunKind, run_shards
from scanner.report import exposure_sentence, fmt, fmt_fraction, forest_png, fraction_rows, render_report
from scanner.runfolder import RunFolder
from scanner.transfer import (Transfer, exposure_points, operating_point_sentence, transfer_warning,
                              transferred_detector)


def run_sweep(inputs: list[str], out: str, detector: TrainedDetector, cfg: ScanConfig, accept_shift: bool = False,
              progress: Callable[[str], None] = print, add: bool | None = None) -> dict:
    """accept_shift: estimate even when a calibrated detector does not transfer to cfg's model
    (scanner.transfer); the report's first sentence then says so. add: input files the
    run in `out` lacks join it."""
    detector.check_usable_with(cfg)
    detector, transfer = transferred_detector(detector, cfg, str(out).rstrip("/") + "/transfer", accept_shift, progress)
    kind = RunKind("sweep", keep_text=False, dedupe=False, strict=False, detector=detector.spec)
    manifest = run_shards(inputs, out, cfg, kind, progress, add)
    metrics = sweep_metrics(manifest, detector, cfg, transfer)
    RunFolder(out).write_files(render_report("Contamination sweep", sweep_blocks(metrics, manifest["shards"]), metrics))
    return metrics


def sweep_metrics(manifest: dict, detector: TrainedDetector, cfg: ScanConfig, transfer: Transfer | None = None) -> dict:
    """Per-source contaminated fractions over every finished shard of the inputs, with the
    detector's operating point under cfg's model where it was measured there (transfer)."""
    op = transfer.operating_point if transfer else detector.operating_point
    by_exposure = exposure_points(detector, op.fp, op.n_neg)
    sources = manifest["per_source"]
    total_n, total_flagged = (sum(v[i] for v in sources.values()) for i in (0, 1))
    c = manifest["counts"]
    return {
        "detector": {"kind": detector.kind, "name": detector.name, "fingerprint": detector.fingerprint, "threshold": detector.threshold,
                     "operating_point": asdict(op) | {"tpr": op.tpr, "fpr": op.fpr},
                     "trained_on_model": detector.scan_config["model"], "calibration": detector.calibration},
        "transfer": transfer and transfer.to_dict(),
        "model": cfg.model,
        "model_differs_from_training": cfg.model != detector.scan_config["model"],
        "overall": fraction_over_exposures(total_flagged, total_n, op, by_exposure) if total_n else None,
        "sources": {s: fraction_over_exposures(f, n, op, by_exposure) for s, (n, f) in sources.items() if n},
        "counts": {k: c[k] for k in ("read", "scored", "quarantined")},
        "shards": {"done": c["shards_done"], "skipped": c["shards_skipped"], "failed": c["shards_failed"]},
        "scored_on_nodes": manifest["scored_on_nodes"], "wall_seconds": manifest["wall_seconds"],
        "versions": manifest["versions"],
    }


def sweep_headline(m: dict) -> str:
    o = m["overall"]
    if not o or not o["estimable"]:
        return "No estimate: the detector's operating point cannot tell seen from unseen documents."
    top = max((s for s, e in m["sources"].items() if e["estimable"]), key=lambda s: m["sources"][s]["estimate"],
              default=None)
    said = f"The model saw an estimated {fmt_fraction(o)} of the {o['n']} documents"
    if top is not None and len(m["sources"]) > 1:
        said += f"; the most seen source is {top} at {fmt_fraction(m['sources'][top])}"
    return said + "."


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
               ("table", ["source", "documents", "flagged", "flag rate", "estimated fraction [95% CI]"],
                [[s, e["n"], e["flagged"], fmt(e["flag_rate"]), fmt_fraction(e)] for s, e in m["sources"].items()]
                + ([["all", m["overall"]["n"], m["overall"]["flagged"], fmt(m["overall"]["flag_rate"]),
                     fmt_fraction(m["overall"])]] if m["overall"] else []))]
    blocks += [("h2", "Shards"),
               ("p", f"{m['shards']['done']} scored in this run, {m['shards']['skipped']} done before, "
                     f"{m['shards']['failed']} failed. Rows: {m['counts']['read']} read, {m['counts']['scored']} "
                     f"scored, {m['counts']['quarantined']} quarantined (see quarantine/).")]
    failed = [[e["uri"], e["error"]] for e in shards if e["state"] == "failed"]
    if failed:
        blocks.append(("table", ["failed shard", "error"], failed))
    return blocks
