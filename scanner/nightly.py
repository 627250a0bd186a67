"""`scanner nightly`: are this checkpoint's eval sets contaminated, and more so than last night?

One config file, the same YAML/TOML as `scanner scan --config` plus these keys:

    model: /checkpoints/step-120000      # the checkpoint to check
    detector: /models/detector           # a `scanner train` folder; its feature settings are used
    eval_sets:                           # each: name, data (files, folders, globs), optional columns
      - {name: wikimia_128, data: [/evals/wikimia/128.jsonl], text_col: input}
      - {name: mmlu, data: ["/evals/mmlu/*.parquet"]}
      - {name: qa, data: [/evals/qa.jsonl], reference: [/evals/qa_after_cutoff.jsonl]}
      - {name: mmlu_vs_corpus, data: [/evals/mmlu.jsonl], corpus: ["s3://bucket/pretrain/*.parquet"]}
    contamination_threshold: 0.05        # contaminated: the 95% CI of the seen fraction lies above it
    max_increase: 0.05                   # worse: the estimate rose more than this since the last run
    alpha: 0.01                          # sets with a reference: contaminated when the set test's
                                         # p-value, Holm-adjusted over the run's sets, is below it
    reference_model: previous            # optional, for sets with a reference: each score's difference
                                         # to this model becomes a set-test feature (MIMIR's Ref);
                                         # "previous" is the previous run's checkpoint, whose scans of
                                         # the same sets are reused (contamination new since then)

Per set: a membership scan whose scoring actors also apply the detector (the engine, as a sweep
does), the flags turned into an estimated seen fraction (scanner.contamination), and, where the
set has member/non-member labels, the leakage baseline and every MIA score next to it
(scanner.evaluate). A set that names a `reference` (text of the same distribution the model
cannot have seen) also gets dataset inference (scanner.infer): the blind baseline checks that
the two sets are comparable (if not, the set's status is "invalid": exit 2), the reference is
scanned the same way, and the set test's p-value, Holm-adjusted over the sets of the run, makes
the set contaminated when it is below `alpha`. A set that names a `corpus` (the training data, or
part of it) or an `overlap` folder also gets the exact n-gram overlap of its items with it
(scanner.overlap; a corpus is matched once into OUT/overlap/<set>/<fingerprint of its items>/
and reused by later nights): the share of items found in the corpus beside the model's
verdict, and for a labelled set each score's AUC against "the whole item is in the corpus".
Each night writes OUT/<run name>/ and is compared with the newest earlier run in OUT that has
a metrics.json (or --previous).

Exit codes: 0 every set clean; 1 some set contaminated or worse than the previous run; 2 some
set could not be checked (its error is in the report). 2 wins over 1: an incomplete check is not
a verdict, and the report still lists every finding.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime, timezone

from scanner.config import load_config, read_config_file
from scanner.contamination import OperatingPoint, fraction_over_exposures
from scanner.detector.trained import TrainedDetector, calibration_note, load_trained
from scanner.engine import RunKind, columns_from_config, require_complete, run_shards
from scanner.errors import InputError
from scanner.infer import (DEFAULT_SPLITS, INVALID, NOT_SHOWN, SEEN, compare_runs, reference_model_config,
                           scan_under_reference_model, shift_check)
from scanner.overlap import DEFAULT_N
from scanner.provenance import package_versions
from scanner.report import fmt, fmt_auc, fmt_fraction, forest_png, fraction_rows, trend_png, write_report
from scanner.runfolder import RunFolder
from scanner.scoring.options import BACKENDS
from scanner.storage import Store, join, parent, read_json_at
from scanner.transfer import exposure_points, operating_point_sentence, transfer_warning, transferred_detector

NIGHTLY_KEYS = ("detector", "eval_sets", "contamination_threshold", "max_increase", "alpha", "reference_model")
COLUMN_KEYS = ("text_col", "label_col", "id_col", "source_col", "image_col")
SET_KEYS = ("name", "data", "reference", "corpus", "overlap", *COLUMN_KEYS)
EXIT = {"clean": 0, "contaminated": 1, "worse": 1, "invalid": 2, "error": 2}


def load_nightly(path: str) -> tuple[dict, list[dict], dict]:
    """(nightly settings, eval sets, scan options) from one config file."""
    raw = read_config_file(path, extra=NIGHTLY_KEYS)
    if "detector" not in raw:
        raise InputError(f"{path}: needs `detector:` (a `scanner train` folder)")
    sets = raw.get("eval_sets")
    if not isinstance(sets, list) or not sets:
        raise InputError(f"{path}: needs `eval_sets:`, a list of {{name, data}}")
    names = set()
    for i, s in enumerate(sets):
        if not isinstance(s, dict) or not {"name", "data"} <= set(s) or set(s) - set(SET_KEYS):
            raise InputError(f"{path}: eval_sets[{i}] must have name and data, and only {SET_KEYS}: {s!r}")
        if s["name"] in names or "/" in str(s["name"]):
            raise InputError(f"{path}: eval_sets[{i}]: name {s['name']!r} is repeated or contains '/'")
        names.add(s["name"])
        if "corpus" in s and "overlap" in s:
            raise InputError(f"{path}: eval_sets[{i}]: give `corpus` (matched here) or `overlap` (a result), not both")
        for key in ("data", "reference", "corpus"):
            if key in s:
                s[key] = [s[key]] if isinstance(s[key], str) else list(s[key])
    settings = {"detector": raw["detector"], "contamination_threshold": _number(raw, "contamination_threshold", 0.05, path),
                "max_increase": _number(raw, "max_increase", 0.05, path), "alpha": _number(raw, "alpha", 0.01, path),
                "reference_model": raw.get("reference_model")}
    if not 0 < settings["alpha"] < 1:
        raise InputError(f"{path}: alpha must lie in (0, 1), not {settings['alpha']}")
    scan_options = {k: v for k, v in raw.items() if k not in NIGHTLY_KEYS}
    return settings, sets, scan_options


def _number(raw: dict, key: str, default: float, path: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{path}: {key} must be a number, not {value!r}")
    return float(value)


def check_run_name(name: str) -> str:
    """A run's folder name inside --out: a plain name, never a path out of it."""
    if not name or name in (".", "..") or any(c in name for c in "/\\"):
        raise InputError(f"--run-name {name!r}: must be a plain folder name (no path separators, not . or ..)")
    return name


def earlier_runs(root: Store, run_name: str) -> list[str]:
    """The names of the run folders in root before this run (by name) that finished (have a
    metrics.json)."""
    return [d for d in root.folders() if d < run_name and root.exists(f"{d}/metrics.json")]


def previous_metrics(root: Store, run_name: str, explicit: str | None) -> tuple[dict | None, str | None]:
    if explicit:
        try:
            return read_json_at(explicit), explicit
        except FileNotFoundError:
            raise InputError(f"--previous {explicit}: no such file") from None
    earlier = earlier_runs(root, run_name)
    if not earlier:
        return None, None
    return root.read_json(f"{earlier[-1]}/metrics.json"), root.uri_of(f"{earlier[-1]}/metrics.json")


TREND_RUNS = 30  # earlier runs a set's trend chart shows


def history(root: Store, run_name: str, sets: dict) -> dict[str, list[dict]]:
    """Per eval set of this run, its seen-fraction estimates in the earlier runs in root (the
    last TREND_RUNS that hold it) and in this one, oldest first."""
    out: dict[str, list[dict]] = {name: [] for name in sets}
    for d in earlier_runs(root, run_name):
        try:
            old = root.read_json(f"{d}/metrics.json").get("sets", {})
        except (OSError, json.JSONDecodeError):
            continue  # a run folder being written, or damaged: not part of the trend
        for name in out:
            c = (old.get(name) or {}).get("contamination")
            if c and c.get("estimable"):
                out[name].append({"run": d, "estimate": c["estimate"], "ci": c["ci"]})
    for name, r in sets.items():
        c = r.get("contamination")
        if c and c.get("estimable"):
            out[name].append({"run": run_name, "estimate": c["estimate"], "ci": c["ci"]})
    return {name: points[-TREND_RUNS - 1:] for name, points in out.items()}


def set_status(contamination: dict, previous_estimate: float | None, threshold: float, max_increase: float) -> str:
    """clean / contaminated (the seen fraction's 95% CI lies above the threshold; with a calibrated
    detector, its range over the calibrated exposures) / worse (the estimate rose more than
    max_increase since the previous run)."""
    if contamination.get("ci_over_exposures", contamination["ci"])[0] > threshold:
        return "contaminated"
    if previous_estimate is not None and contamination["estimate"] - previous_estimate > max_increase:
        return "worse"
    return "clean"


def exit_code(statuses: list[str]) -> int:
    """0 all clean, 1 some set contaminated or worse, 2 some set not checked (2 wins: an
    incomplete check is not a verdict)."""
    return max((EXIT[s] for s in statuses), default=0)


def set_config(detector: TrainedDetector, scan_options: dict, overrides: dict):
    """An eval set's scan settings: the detector's model and features, the config's options, the
    set's own columns; image-text sets read the image column the detector's training scan read
    unless they name one."""
    base = detector.base_config() | scan_options
    if BACKENDS[base.get("backend", "hf")].image_text:
        base.setdefault("image_col", detector.scan_config.get("image_col"))
    return load_config(None, overrides, base=base)


def check_set(spec: dict, root: Store, run_dir: str, detector: TrainedDetector, scan_options: dict, overrides: dict,
              settings: dict, previous: dict | None, seed: int, progress: Callable[[str], None],
              reference_model: dict | None = None, operating_point: OperatingPoint | None = None) -> dict:
    """operating_point: the detector's under this model where it was measured here (a calibrated
    detector, scanner.transfer); else the detector's own."""
    from scanner.evaluate import evaluate, write_evaluation_report

    set_dir = join(run_dir, "sets", spec["name"])
    cfg = set_config(detector, scan_options, overrides | {k: spec[k] for k in COLUMN_KEYS if k in spec})
    op = operating_point or detector.operating_point
    detector.check_usable_with(cfg)
    manifest = _scan(spec["data"], join(set_dir, "scan"), cfg, detector, "the set", progress)
    feats = RunFolder(join(set_dir, "scan")).features(columns=["sample_id", "label", "flagged"])
    result = {"data": spec["data"], "counts": manifest["counts"],
              "contamination": fraction_over_exposures(int(feats["flagged"].sum()), feats.height, op,
                                                       exposure_points(detector, op.fp, op.n_neg))}
    overlap_dir = _overlap(spec, cfg, root, progress)
    if overlap_dir is not None:
        result["overlap"] = overlap_summary(overlap_dir)
    labels = feats["label"]
    if labels.null_count() == 0 and labels.n_unique() == 2:
        progress(f"{spec['name']}: labelled: leakage baseline and MIA scores")
        ev = evaluate(join(set_dir, "scan"), detector.folder, seed=seed, overlap_dir=overlap_dir, progress=progress)
        report = write_evaluation_report(ev, join(set_dir, "evaluate"))
        result["labelled"] = asdict(ev.headline) | {"report": report["html"]}
    if "reference" in spec:
        result["inference"] = _inference(spec, set_dir, cfg, detector, seed, progress, reference_model)
    if not result["contamination"]["estimable"]:
        raise InputError("the detector's operating point is too uncertain to estimate a seen fraction")
    before = ((previous or {}).get("sets", {}).get(spec["name"], {}).get("contamination") or {}).get("estimate")
    result["previous_estimate"] = before
    result["change"] = None if before is None else result["contamination"]["estimate"] - before
    result["status"] = set_status(result["contamination"], before, settings["contamination_threshold"],
                                  settings["max_increase"])
    if result.get("inference", {}).get("verdict") == INVALID:
        result["status"] = "invalid"
    return result


def _overlap(spec: dict, cfg, root: Store, progress) -> str | None:
    """The set's overlap result: the one given, or its items matched against its corpus (once per
    distinct set of items: later nights find the finished shards and skip them)."""
    from scanner.corpus import read_corpus
    from scanner.overlap import eval_fingerprint, run_overlap

    if "overlap" in spec:
        return spec["overlap"]
    if "corpus" not in spec:
        return None
    columns = columns_from_config(cfg, labels=False)
    items = read_corpus(spec["data"], columns).samples
    folder = root.uri_of(f"overlap/{spec['name']}/{eval_fingerprint(items, DEFAULT_N)}")
    progress(f"{spec['name']}: exact {DEFAULT_N}-gram overlap with {' '.join(spec['corpus'])}")
    m = run_overlap(spec["data"], spec["corpus"], folder, eval_columns=columns, progress=progress)
    if m["errors"]:
        raise InputError(f"the overlap with the corpus is incomplete: {next(iter(m['errors'].values()))}")
    return folder


def overlap_summary(folder: str) -> dict:
    from scanner.evaluate import overlap_items

    cov = overlap_items(folder)["coverage"]
    return {"dir": str(folder), "items": len(cov), "any": int((cov > 0).sum()), "whole": int((cov >= 1).sum()),
            "share_any": float((cov > 0).mean()), "share_whole": float((cov >= 1).mean())}


def _scan(data: list[str], folder: str, cfg, detector: TrainedDetector, what: str, progress) -> dict:
    manifest = run_shards(data, folder, cfg, RunKind("scan", detector=detector.spec), progress)
    require_complete(manifest, f"the scan of {what} failed")
    return manifest


def resolve_reference_model(setting: str | None, previous: dict | None, previous_path: str | None) -> dict | None:
    """{"model", "previous_run"} from the `reference_model` setting; "previous" without a previous
    run is None (the first night has no earlier checkpoint)."""
    if setting != "previous":
        return setting and {"model": setting, "previous_run": None}
    if previous is None:
        return None
    return {"model": previous["model"], "previous_run": parent(previous_path)}


def _under_reference_model(spec: dict, set_dir: str, cfg, reference_model: dict, progress):
    """The set and its reference under the reference model: the previous run's scans of the same
    files when they were made under that model, else scans without neighbors."""
    prev = reference_model["previous_run"]
    if prev is not None:
        prev_set = join(prev, "sets", spec["name"])
        runs = [join(prev_set, "scan"), join(prev_set, "reference")]
        try:
            same = [RunFolder.existing(r) for r in runs]
            earlier = read_json_at(join(prev, "metrics.json"))["sets"][spec["name"]]
        except (InputError, KeyError, OSError):
            same = None
        if same and (earlier.get("data"), (earlier.get("inference") or {}).get("reference")) == (
                spec["data"], spec["reference"]) and all(
                r.config["model"] == reference_model["model"] for r in same):
            progress(f"{spec['name']}: reusing the previous run's scans under {reference_model['model']}")
            return tuple(same)
    return scan_under_reference_model({"suspect": spec["data"], "reference": spec["reference"]}, set_dir,
                                      reference_model_config(cfg, reference_model["model"]), progress)


def _inference(spec: dict, set_dir: str, cfg, detector: TrainedDetector, seed: int, progress,
               reference_model: dict | None = None) -> dict:
    """Dataset inference against the set's reference (scanner.infer); the p-value is adjusted
    over the run's sets afterwards (holm)."""
    columns = columns_from_config(cfg, labels=False)
    shift = shift_check(spec["data"], spec["reference"], columns, seed, progress)
    if not shift["verdict"]["usable_for_mia"]:
        return {"verdict": INVALID, "p_value": None, "blind_baseline": shift}
    progress(f"{spec['name']}: scanning its reference {' '.join(spec['reference'])}")
    _scan(spec["reference"], join(set_dir, "reference"), replace(cfg, label_col=None), detector, "its reference", progress)
    under_ref = reference_model and _under_reference_model(spec, set_dir, cfg, reference_model, progress)
    result = compare_runs(RunFolder(join(set_dir, "scan")), RunFolder(join(set_dir, "reference")), detector, DEFAULT_SPLITS, seed,
                          under_ref)
    progress(f"{spec['name']}: set test p = {result.p_value:.3g}")
    return {"p_value": result.p_value, "effect_size": result.test.effect_size,
            "seen_fraction": result.seen_fraction, "seen_at_least": result.test.seen_at_least, "n": result.n,
            "blind_baseline": shift,
            "reference": spec["reference"], "reference_model": reference_model and reference_model["model"],
            "features": result.features}


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment: controls the family-wise error over the sets of one run."""
    names = sorted(p_values, key=p_values.get)
    adjusted, running = {}, 0.0
    for i, name in enumerate(names):
        running = max(running, min(1.0, (len(names) - i) * p_values[name]))
        adjusted[name] = running
    return adjusted


def apply_set_tests(results: dict, alpha: float) -> None:
    """Holm over the sets whose set test ran; a clean set with an adjusted p below alpha is
    contaminated (worse, invalid and error stay as they are)."""
    tested = {name: r["inference"]["p_value"] for name, r in results.items()
              if (r.get("inference") or {}).get("p_value") is not None}
    for name, p in holm(tested).items():
        inference = results[name]["inference"]
        inference["p_holm"] = p
        inference["verdict"] = SEEN if p < alpha else NOT_SHOWN
        if inference["verdict"] == SEEN and results[name]["status"] == "clean":
            results[name]["status"] = "contaminated"


def run_nightly(config: str, out: str, run_name: str | None = None, previous: str | None = None,
                model: str | None = None, seed: int = 0, accept_shift: bool = False,
                progress: Callable[[str], None] = print) -> dict:
    """accept_shift: check the sets even when a calibrated detector does not transfer to the
    model (scanner.transfer); the report's first sentence then says so."""
    t0 = time.perf_counter()
    settings, sets, scan_options = load_nightly(config)
    detector = load_trained(settings["detector"])
    model_cfg = set_config(detector, scan_options, {"model": model})
    detector.check_usable_with(model_cfg)
    root = Store(out)
    run_name = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%MZ") if run_name is None else check_run_name(run_name)
    prev, prev_path = previous_metrics(root, run_name, previous)
    run_dir = root.uri_of(run_name)
    detector, transfer = transferred_detector(detector, model_cfg, join(run_dir, "transfer"), accept_shift, progress)
    op = transfer.operating_point if transfer else detector.operating_point
    overrides = {"model": model}
    reference_model = resolve_reference_model(settings["reference_model"], prev, prev_path)
    results = {}
    for spec in sets:
        progress(f"eval set {spec['name']}: {' '.join(spec['data'])}")
        try:
            results[spec["name"]] = check_set(spec, root, run_dir, detector, scan_options, overrides, settings, prev, seed,
                                              progress, reference_model, op)
        except InputError as e:
            results[spec["name"]] = {"data": spec["data"], "status": "error", "error": str(e)}
        except Exception as e:  # one broken set must not hide the others' results
            results[spec["name"]] = {"data": spec["data"], "status": "error", "error": f"{type(e).__name__}: {e}",
                                     "traceback": traceback.format_exc()}
        r = results[spec["name"]]
        progress(f"eval set {spec['name']}: {r['status']}" + (f" ({r['error']})" if "error" in r else ""))
    apply_set_tests(results, settings["alpha"])
    code = exit_code([r["status"] for r in results.values()])
    trend = history(root, run_name, results)
    metrics = {"run": run_name, "model": model or scan_options.get("model") or detector.scan_config["model"],
               "detector": {"path": settings["detector"], "kind": detector.kind, "name": detector.name,
                            "operating_point": vars(op), "calibration": detector.calibration},
               "transfer": transfer and transfer.to_dict(),
               "settings": settings, "previous": prev_path, "sets": results, "exit_code": code, "trend": trend,
               "wall_seconds": round(time.perf_counter() - t0, 1), "versions": package_versions()}
    write_report(run_dir, f"Nightly contamination check: {run_name}", nightly_blocks(metrics), metrics)
    return metrics


def nightly_blocks(m: dict) -> list:
    s = m["settings"]
    rows = []
    for name, r in m["sets"].items():
        c = r.get("contamination")
        lab = r.get("labelled")
        ov = r.get("overlap")
        rows.append([name, r["status"], r.get("counts", {}).get("scored", "-"), fmt_fraction(c, "-"),
                     "-" if r.get("change") is None else f"{r['change']:+.3f}", _set_test_cell(r.get("inference")),
                     f"{ov['share_any']:.1%} / {ov['share_whole']:.1%}" if ov else "no corpus",
                     f"{lab['baseline_verdict']} (AUC {fmt(lab['baseline_auc'])})" if lab else "no labels"])
    statuses = [r["status"] for r in m["sets"].values()]
    flagged = [n for n, r in m["sets"].items() if r["status"] != "clean"]
    headline = (f"All {len(statuses)} eval sets clean." if not flagged else
                "; ".join(f"{n}: {m['sets'][n]['status']}" for n in flagged) + f" (of {len(statuses)} sets).")
    estimates = {n: r.get("contamination") for n, r in m["sets"].items()}
    transfer = m.get("transfer")
    if transfer and not transfer["transfers"]:
        headline = f"{transfer_warning(transfer)} {headline}"
    blocks = [("p", f"**{headline} Exit code {m['exit_code']}.**"),
              ("img", "headline_fractions.png", forest_png(
                  fraction_rows(estimates), "Estimated seen fraction per eval set", line=s["contamination_threshold"],
                  line_label=f"threshold {s['contamination_threshold']:g}"))]
    blocks += [("p", f"Model {m['model']}; detector {m['detector']['path']} ({m['detector']['name']}). Exit code "
                    f"{m['exit_code']}. Contaminated: the 95% CI of the seen fraction (with a calibrated detector, "
                    f"its range over the calibrated exposures) lies above {s['contamination_threshold']}; worse: the "
                    f"estimate rose more than {s['max_increase']} since "
                    f"{m['previous'] or 'the previous run (none found)'}."),
              ("table", ["eval set", "status", "samples", "seen fraction [95% CI]", "change",
                         f"set test p, Holm (alpha {s['alpha']})", "items in the corpus (any n-gram / whole)",
                         "leakage baseline"], rows)]
    if m["detector"].get("calibration"):
        blocks.insert(2, ("p", calibration_note(m["detector"]["calibration"], transfer) + " "
                          + operating_point_sentence(m["detector"]["operating_point"], transfer)))
    if any(len(points) > 1 for points in m.get("trend", {}).values()):
        blocks += [("h2", "Trend: each set's seen fraction over the runs in this folder"),
                   ("img", "trend.png", trend_png(m["trend"], threshold=s["contamination_threshold"]))]
    refs = {r["inference"].get("reference_model") for r in m["sets"].values() if r.get("inference")} - {None}
    if refs:
        blocks.append(("p", f"The set tests also use each score's difference to the reference model {', '.join(refs)} "
                            "(MIMIR's Ref): with the previous checkpoint there, they pick up contamination new since "
                            "it as well as the model's own scores."))
    elif s.get("reference_model") == "previous":
        blocks.append(("p", "reference_model: previous: no previous run, so tonight's set tests use no reference "
                            "model."))
    for name, r in m["sets"].items():
        if "error" in r:
            blocks.append(("p", f"{name}: error: {r['error']}"))
        if r.get("labelled"):
            blocks.append(("p", f"{name}: {r['labelled']['conclusion']} Report: {r['labelled']['report']}"))
    return blocks


def _set_test_cell(inference: dict | None) -> str:
    if not inference:
        return "no reference"
    if inference["verdict"] == INVALID:
        return f"invalid: the texts alone differ (AUC {fmt_auc(inference['blind_baseline'])})"
    return f"{inference['p_holm']:.3g} ({inference['verdict']})"


def summary_lines(m: dict) -> list[str]:
    lines = []
    for name, r in m["sets"].items():
        detail = r["error"] if "error" in r else f"seen fraction {fmt_fraction(r['contamination'], '-')}"
        if r.get("inference"):
            detail += f"; set test: {_set_test_cell(r['inference'])}"
        if r.get("overlap"):
            o = r["overlap"]
            detail += f"; in the corpus: {o['share_any']:.1%} of items (whole: {o['share_whole']:.1%})"
        lines.append(f"{name:<24} {r['status']:<13} {detail}")
    return lines
