"""`scanner` command line. Exit codes: 0 done, 2 bad input or usage (message names the problem);
`nightly` also exits 1 when an eval set is contaminated or worse than the previous run."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path

from scanner.corpus import Columns
from scanner.errors import InputError
from scanner.progress import Progress
from scanner.scoring.options import BACKENDS
from scanner.storage import join

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # as a shell reports a Ctrl-C
ACTORS_HELP = "scoring actors (default: one per GPU, or one per node without GPUs)"
SHARD_HELP = "at most this many rows per resumable shard; big files are cut (default 1000)"
ADD_HELP = ("add input files to the run already in --out (without it, a folder refuses inputs other than its "
            "run's: a rerun resumes, it never mixes two runs)")
ACCEPT_SHIFT_HELP = ("estimate even when a calibrated detector does not transfer to this model (its scores of "
                     "never-seen text moved with the fine-tune); the report's first sentence says so")


NEIGHBOR_SEED_HELP = ("seeds the neighbors' perturbations and the embedding projection: a scoring setting, "
                      "part of the run's identity (default: the config file's `neighbor_seed`, else 0)")


def _add_corpus_args(p: argparse.ArgumentParser, labels_by_default: bool = True, labels: bool = True,
                     images: bool = False) -> None:
    p.add_argument("data", nargs="+", help="files, folders or globs: jsonl, parquet, csv/tsv, HF save_to_disk folders")
    p.add_argument("--text-col", default=None, help="text column (default: 'text', else 'input')")
    if not labels:
        p.set_defaults(label_col=None)
    elif labels_by_default:
        p.add_argument("--label-col", default="label", help="label column, 1 = member, 0 = non-member (default: label)")
    else:
        p.add_argument("--label-col", default=None, help="membership label column to carry into the output "
                                                         "(1 = member, 0 = non-member; default: none is read)")
    p.add_argument("--id-col", default=None, help="id column (default: 'id' where present, else a hash of source+text)")
    p.add_argument("--source-col", default=None, help="source column (default: the file's path)")
    if images:
        p.add_argument("--image-col", default=None, help="image-text samples: the image column (encoded bytes, an "
                                                          "HF Image, or a path relative to its file); default: text only")


def columns_from_args(args) -> Columns:
    return Columns(text=args.text_col, label=args.label_col, id=args.id_col, source=args.source_col,
                   image=getattr(args, "image_col", None))


def _print_summary(m: dict) -> None:
    lo, hi = m["auc_ci"]
    tprs = ", ".join(f"TPR@{float(f):.1%}={v:.3f}{'' if m['tpr_at_fpr_estimable'][f] else '*'}"
                     for f, v in m["tpr_at_fpr"].items())
    print(f"AUC {m['auc']:.3f} [{lo:.3f}, {hi:.3f}]  {tprs}  best model: {m['best_model']}")
    print(f"verdict: {m['verdict']['status']}: {m['verdict']['text']}")
    print(f"report: {m['_report']}")


def cmd_baseline(args) -> int:
    from scanner.baseline.report import baseline_report

    m = baseline_report(args.data, args.out, columns_from_args(args), args.folds, args.seed, args.n_boot,
                        args.jobs, args.permute_labels, args.cv_repeats, Progress())
    _print_summary(m)
    return 0


def cmd_train(args) -> int:
    from scanner.train import train_on_ray

    info = train_on_ray(args.features, args.out, seed=args.seed, target_fpr=args.target_fpr)
    for kind, d in info["detectors"].items():
        form = f" ({d['form']})" if "form" in d else ""
        print(f"{kind} detector{form}: validation AUC {d['best_val_auc']:.3f} after {d['epochs']} epochs, "
              f"threshold {d['threshold']:.4f} at {args.target_fpr:.1%} FPR")
    print(f"blind baseline (nested CV over the same texts): AUC {info['baseline']['auc']:.3f}, "
          f"{info['baseline']['best_model']}")
    print(f"split (samples): {info['split']}; saved to {args.out}")
    return 0


def _evaluate(run_dir: str, out: str, detector_dir: str | None, seed: int, progress, overlap_dir=None) -> None:
    from scanner.evaluate import evaluate, write_evaluation_report

    ev = evaluate(run_dir, detector_dir, seed=seed, overlap_dir=overlap_dir, progress=progress)
    report = write_evaluation_report(ev, out)
    m = ev.metrics
    print(f"{'score':<22} {'AUC':>6}  95% CI          TPR@1%FPR")
    for name, s in m["scores"].items():
        lo, hi = s["auc_ci"]
        star = "" if s["tpr_at_fpr_estimable"]["0.01"] else "*"
        print(f"{name:<22} {s['auc']:6.3f}  [{lo:.3f}, {hi:.3f}]  {s['tpr_at_fpr']['0.01']:.3f}{star}")
    if m["by_neighbor_kind"]:
        print("neighborhood by kind: " + ", ".join(f"{r['kind']} {r['auc']:.3f}" for r in m["by_neighbor_kind"]))
    print(m["conclusion"])
    if m["overlap"]:
        o = m["overlap"]
        print(f"overlap with the corpus: {o['whole_in_corpus']} of {o['n']} items occur whole ({o['members_whole']} "
              f"members), {o['any_overlap']} share an n-gram; {len(o['non_members_with_overlap'])} non-members overlap")
    print(f"report: {report['html']}")


def cmd_evaluate(args) -> int:
    _evaluate(args.features, args.out, args.detector, args.seed, Progress(), overlap_dir=args.overlap)
    return 0


def cmd_demo(args) -> int:
    """Embedded default, offline: a tiny GPT-2 trained here on half of CPython's pydoc passages
    (known membership) -> scan -> train -> exact overlap of the passages with the model's own
    training text -> evaluate (model and data evidence side by side); then the same model and
    detectors on WikiMIA (128 words, shipped in the package), a benchmark whose split the blind
    baseline exposes."""
    import json

    from scanner.config import ScanConfig
    from scanner.train import train_on_ray
    from scanner.overlap import run_overlap
    from scanner.scan import run_scan
    from scanner.storage import Store, absolute, cache_folder
    from scanner.toy import english_passages, member_split, train_tiny_gpt2

    out = Store(absolute(args.out))
    at = out.uri_of
    progress = Progress()
    passages = english_passages()
    members, non_members = member_split(passages, seed=args.seed)
    if not out.exists("model/config.json"):
        progress(f"training a tiny GPT-2 on {len(members)} of {len(passages)} passages (about two minutes on 2 cores)")
        local = Path(out.root if out.local else cache_folder("demo", out.uri))
        train_tiny_gpt2(members, passages, local / "model", seed=args.seed, log=progress)
        if not out.local:
            out.upload(str(local / "model"), "model")
    member_set = set(members)
    if not out.exists("known_membership.jsonl"):  # (rewritten, a rerun would score it again)
        out.write_bytes("known_membership.jsonl", "".join(
            json.dumps({"text": t, "label": int(t in member_set)}) + "\n" for t in passages).encode())
    cfg = ScanConfig(model=at("model"), neighbors=args.neighbors, neighbor_seed=args.seed).validate()
    run_scan([at("known_membership.jsonl")], at("scan_known"), cfg, progress=progress)
    train_on_ray(at("scan_known"), at("detectors"), seed=args.seed)
    if not out.exists("training_text.jsonl"):
        out.write_bytes("training_text.jsonl", "".join(
            json.dumps({"id": f"train-{i}", "text": t}) + "\n" for i, t in enumerate(members)).encode())
    progress("exact 13-gram overlap of the passages with the model's training text")
    run_overlap([at("known_membership.jsonl")], [at("training_text.jsonl")], at("overlap_known"), progress=progress)
    print("== known membership (tiny GPT-2 trained on half of the passages), held-out samples")
    _evaluate(at("scan_known"), at("eval_known"), at("detectors"), args.seed, progress, overlap_dir=at("overlap_known"))
    wikimia = str(resources.files("scanner") / "data" / "wikimia_128.jsonl")
    run_scan([wikimia], at("scan_wikimia"), cfg, progress=progress)
    print("== WikiMIA-128 under the same model (it never saw any of it)")
    _evaluate(at("scan_wikimia"), at("eval_wikimia"), at("detectors"), args.seed, progress)
    return 0


def _failed_shards(manifest: dict) -> int:
    """Exit code 2 when shards failed, each named with its error (the others are done)."""
    failed = [e for e in manifest["shards"] if e["state"] == "failed"]
    for e in failed[:10]:
        print(f"scanner: error: {e['shard'] or e['uri']}: {e['error']}", file=sys.stderr)
    if len(failed) > 10:
        print(f"scanner: error: ... {len(failed) - 10} more failed shards in the manifest", file=sys.stderr)
    return EXIT_BAD_INPUT if failed else 0


def cmd_scan(args) -> int:
    from scanner.config import load_config
    from scanner.scan import run_scan

    overrides = {"model": args.model, "neighbors": args.neighbors, "batch_tokens": args.batch_tokens,
                 "neighbor_seed": args.neighbor_seed, "actors": args.actors, "revision": args.revision,
                 "shard_size": args.shard_size,
                 "trust_remote_code": args.trust_remote_code or None, "text_col": args.text_col,
                 "label_col": args.label_col, "id_col": args.id_col, "source_col": args.source_col,
                 "image_col": args.image_col, "backend": args.backend, "reference_model": args.reference_model,
                 "recall_prefix": args.recall_prefix, "conrecall_prefix": args.conrecall_prefix,
                 "token_frequencies": args.token_frequencies}
    cfg = load_config(args.config, overrides)
    m = run_scan(args.data, args.out, cfg, progress=Progress(), add=args.add)
    c = m["counts"]
    print(f"scanned {c['scored']} samples ({c['scored_this_invocation']} this run, {c['shards_skipped']} shards "
          f"skipped), {c['quarantined']} quarantined, {c['shards_failed']} shards failed; "
          f"{m['tokens_per_second'] or 0:.0f} tokens/s")
    if m["positions"]:
        print(f"padding: {m['positions']['padded_share']:.1%} of the forward passes' positions")
    if m.get("prefixes"):
        print(f"note: {m['prefixes']['warning']}")
    print(f"features: {join(args.out, 'features')}  manifest: {join(args.out, 'manifest.json')}")
    return _failed_shards(m)


def cmd_sweep(args) -> int:
    from scanner.config import load_config
    from scanner.detector.trained import load_trained
    from scanner.report import fmt_fraction
    from scanner.runfolder import RunFolder
    from scanner.sampling import Sampling
    from scanner.sweep import run_sweep

    detector = load_trained(args.detector, args.kind)
    overrides = {"model": args.model, "batch_tokens": args.batch_tokens, "actors": args.actors,
                 "shard_size": args.shard_size, "text_col": args.text_col, "id_col": args.id_col,
                 "source_col": args.source_col, "image_col": args.image_col}
    cfg = load_config(args.config, overrides, base=detector.base_config())
    cfg.label_col = args.label_col  # only when asked: a corpus's own "label" (topics...) is not membership
    try:
        sampling = Sampling(rate=args.sample_rate, shard_rate=args.shard_rate, seed=args.sample_seed, target=args.sample)
    except ValueError as e:
        raise InputError(str(e)) from None
    if args.sample is not None and args.sample_rate < 1:
        raise InputError("give --sample-rate or --sample (a target count), not both")
    m = run_sweep(args.data, args.out, detector, cfg, accept_shift=args.accept_shift, progress=Progress(), add=args.add,
                  sampling=sampling)
    for source, e in list(m["sources"].items())[:20]:
        print(f"{source:<40} {e['n']:>8} scored  flagged {e['flag_rate']:.3f}  contaminated {fmt_fraction(e)}")
    if m["overall"] and m["sampling"]:
        print(f"{'all (weighted by source size)':<40} {m['overall']['n']:>8} scored  "
              f"contaminated {fmt_fraction(m['overall'])}")
    if len(m["sources"]) > 20:
        print(f"... {len(m['sources']) - 20} more sources in {join(args.out, 'metrics.json')}")
    sh = m["shards"]
    print(f"shards: {sh['done']} scored, {sh['skipped']} skipped (done before), {sh['failed']} failed; "
          f"report: {join(args.out, 'report.html')}")
    return _failed_shards(RunFolder(args.out).manifest)


def _int_list(value: str) -> list[int]:
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a comma-separated list of whole numbers") from None


def cmd_calibrate(args) -> int:
    from scanner.calibrate import FinetuneSpec, run_calibration
    from scanner.config import load_config

    cfg = load_config(args.config, {"model": args.model, "neighbor_seed": args.neighbor_seed, "actors": args.actors})
    spec = FinetuneSpec(model=cfg.model, method=args.method, epochs=args.epochs, lr=args.lr,
                        batch_size=args.batch_size, seed=args.seed, revision=cfg.revision,
                        trust_remote_code=cfg.trust_remote_code).validate()
    m = run_calibration(args.data, args.out, cfg, spec, args.exposures, args.members_fraction, args.seed,
                        columns_from_args(args), progress=Progress())
    b = m["blind_baseline"]
    print(f"blind baseline on the random split: AUC {b['auc']:.3f} [{b['auc_ci'][0]:.3f}, {b['auc_ci'][1]:.3f}]")
    for group, scores in m["by_exposure"].items():
        dets = ", ".join(f"{n} AUC {s['auc']:.3f} TPR@1%FPR {s['tpr_at_fpr']['0.01']:.3f}"
                         f"{'' if s['tpr_at_fpr_estimable']['0.01'] else '*'}"
                         for n, s in scores.items() if n.endswith("detector"))
        print(f"{group:<12} {dets}")
    print(f"detector folder for sweep / nightly: {join(args.out, 'detector')}  report: {join(args.out, 'report.html')}")
    return 0


def infer_config(args, detector):
    """The scan settings of `scanner infer`: the detector's (its features must be computed alike) <
    the config file < the flags given; --seed is the set test's and never a scan setting."""
    from scanner.config import load_config

    overrides = {"model": args.model, "neighbors": args.neighbors, "neighbor_seed": args.neighbor_seed,
                 "actors": args.actors, "text_col": args.text_col, "id_col": args.id_col,
                 "source_col": args.source_col, "image_col": args.image_col}
    return load_config(args.config, overrides, base=detector.base_config() if detector else None)


def cmd_infer(args) -> int:
    from scanner.detector.trained import load_trained
    from scanner.infer import run_inference

    detector = load_trained(args.detector, args.kind) if args.detector else None
    cfg = infer_config(args, detector)
    m = run_inference(args.data, args.reference, args.out, cfg, alpha=args.alpha, splits=args.splits, seed=args.seed,
                      detector=detector, reference_model=args.reference_model, progress=Progress())
    b = m["blind_baseline"]
    print(f"blind baseline (suspect vs reference, {b['data']} only): AUC {b['auc']:.3f} [{b['auc_ci'][0]:.3f}, "
          f"{b['auc_ci'][1]:.3f}]")
    if m["p_value"] is not None:
        print(f"p = {m['p_value']:.3g} over {args.splits} splits; effect size {m['test']['effect_size']:.3f}")
    print(f"verdict: {m['verdict']}; report: {join(args.out, 'report.html')}")
    return m["exit_code"]


def cmd_overlap(args) -> int:
    from scanner.overlap import run_overlap

    m = run_overlap(args.data, args.corpus, args.out, n=args.n, eval_columns=columns_from_args(args),
                    corpus_columns=Columns(text=args.corpus_text_col, label=None, id=args.corpus_id_col,
                                           source=args.corpus_source_col),
                    parallel=args.actors, shard_rows=args.shard_size, add=args.add, progress=Progress())
    c = m["counts"]
    print(f"{c['items_with_overlap']} of {c['items']} eval items share a {args.n}-gram with the corpus "
          f"({c['corpus_rows_read']} documents, {c['corpus_documents_matching']} matching)")
    print(f"per item: {join(args.out, 'items.parquet')}  report: {join(args.out, 'report.html')}")
    return 2 if m["errors"] else 0


def cmd_frequencies(args) -> int:
    from scanner.frequencies import run_frequencies

    info = run_frequencies(args.data, args.model, args.out, columns_from_args(args), revision=args.revision,
                           trust_remote_code=args.trust_remote_code, parallel=args.actors, shard_rows=args.shard_size,
                           add=args.add, progress=Progress())
    print(f"{info['tokens']:,} tokens of {info['documents']:,} documents counted ({info['rows_quarantined']} rows "
          f"quarantined, {info['shards_failed']} shards failed)")
    if info["shards_failed"]:
        return 2
    print(f"table: {join(args.out, 'frequencies.parquet')}; scan with --token-frequencies {args.out} for DC-PDD")
    return 0


def cmd_hessian(args) -> int:
    from scanner.hessian import HessianSpec, run_hessian

    spec = HessianSpec(model=args.model, probes=args.probes, eigs=args.eigs, lanczos_steps=args.lanczos_steps,
                       max_tokens=args.max_tokens, max_samples=args.max_samples, seed=args.seed, dtype=args.dtype,
                       revision=args.revision, adapter=args.adapter, trust_remote_code=args.trust_remote_code,
                       actors=args.actors)
    m = run_hessian(args.data, args.out, spec, columns_from_args(args), scan=args.scan, progress=Progress())
    print(m["conclusion"])
    print(f"per sample: {join(args.out, 'samples.parquet')}  report: {join(args.out, 'report.html')}")
    return 0


def cmd_nightly(args) -> int:
    from scanner.nightly import run_nightly, summary_lines

    m = run_nightly(args.config, args.out, run_name=args.run_name, previous=args.previous, model=args.model,
                    seed=args.seed, accept_shift=args.accept_shift, progress=Progress())
    for line in summary_lines(m):
        print(line)
    print(f"exit {m['exit_code']}; report: {join(args.out, m['run'], 'report.html')}")
    return m["exit_code"]


def cmd_scores(args) -> int:
    from scanner.scoring import registry

    print(registry.markdown_table(registry.scores(args.module)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scanner", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("baseline", help="model-free leakage baseline: is this member/non-member split usable for MIA?")
    _add_corpus_args(b, images=True)
    b.add_argument("--out", required=True, help="output folder: metrics.json, report.md, report.html, scores.parquet, quarantine.parquet")
    b.add_argument("--folds", type=int, default=5, help="outer cross-validation folds (default 5)")
    b.add_argument("--cv-repeats", type=int, default=1,
                   help="draws of the outer folds, each sample's score averaged over them; 3 narrows the interval "
                        "by about a third on small sets, at 3x the time (default 1)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the AUC CI (default 1000)")
    b.add_argument("--jobs", type=int, default=None, help="worker threads (default: one per CPU)")
    b.add_argument("--permute-labels", action="store_true", help="negative control: shuffle labels first")
    b.set_defaults(func=cmd_baseline)

    s = sub.add_parser("scan", help="score texts and their neighbors under a model: Parquet feature shards")
    _add_corpus_args(s, images=True)
    s.set_defaults(label_col=None)
    s.add_argument("--model", help="hub id or local path of a causal LM (a vision-language model with --image-col)")
    s.add_argument("--backend", choices=list(BACKENDS), help="hf (default), vllm, or vlm (a vision-language model; "
                                                       "the default with --image-col)")
    s.add_argument("--out", required=True, help="run folder (re-running resumes it)")
    s.add_argument("--add", action="store_true", help=ADD_HELP)
    s.add_argument("--config", help="YAML or TOML file with any scan option; flags override it")
    s.add_argument("--neighbors", type=int, help="neighbors per text (default 24)")
    s.add_argument("--batch-tokens", type=int, help="padded tokens per forward pass (default 16384 on GPU, 1024 on CPU)")
    s.add_argument("--neighbor-seed", type=int, help=NEIGHBOR_SEED_HELP)
    s.add_argument("--actors", type=int, help=ACTORS_HELP)
    s.add_argument("--shard-size", type=int, help=SHARD_HELP)
    s.add_argument("--revision", help="model revision (branch, tag or commit)")
    s.add_argument("--reference-model", help="a model that did not see the data (the base a model was fine-tuned "
                                             "from): adds the reference scores (`scanner scores`)")
    s.add_argument("--recall-prefix", help="a file of texts the model did not see, put in front of each text: adds "
                                           "ReCaLL (they must not be among the scanned texts)")
    s.add_argument("--conrecall-prefix", help="a file of texts the model saw; with --recall-prefix adds Con-ReCall")
    s.add_argument("--token-frequencies", help="a `scanner frequencies` folder of a reference corpus counted with the "
                                               "model's tokenizer: adds DC-PDD")
    s.add_argument("--trust-remote-code", action="store_true", help="allow the model repo's own code (off by default)")
    s.set_defaults(func=cmd_scan)

    t = sub.add_parser("train", help="train the FiMMIA and tabular detectors on a scan's labelled samples")
    t.add_argument("features", help="a `scanner scan` run folder")
    t.add_argument("--out", required=True, help="model folder: safetensors + JSON per detector, split.json")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--target-fpr", type=float, default=0.01, help="FPR of the calibrated threshold (default 0.01)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="every MIA score next to the blind baseline: metrics.json, report.md/html")
    e.add_argument("features", help="a `scanner scan` run folder")
    e.add_argument("--detector", help="a `scanner train` model folder (its held-out samples are evaluated)")
    e.add_argument("--out", required=True)
    e.add_argument("--overlap", help="a `scanner overlap` folder of the same items against the model's training "
                                     "corpus: data evidence beside each score")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=cmd_evaluate)

    w = sub.add_parser("sweep", help="flag the documents of a corpus the model saw, and estimate each source's "
                                     "contaminated fraction (resumable shard by shard)")
    _add_corpus_args(w, labels_by_default=False, images=True)
    w.add_argument("--detector", required=True, help="a `scanner train` folder; its scan settings are reused")
    w.add_argument("--kind", default="auto", choices=["auto", "fimmia", "tabular"],
                   help="which detector (default: the better on validation)")
    w.add_argument("--out", required=True, help="output folder or URI (shared storage on a multi-node cluster)")
    w.add_argument("--model", help="score with this model instead of the detector's (a calibrated detector's FPR is "
                                   "measured again under it; else its TPR/FPR are assumed)")
    w.add_argument("--config", help="YAML or TOML file with scan options (scheduling; feature settings must "
                                    "match the detector's)")
    w.add_argument("--actors", type=int, help=ACTORS_HELP)
    w.add_argument("--shard-size", type=int, help=SHARD_HELP)
    w.add_argument("--batch-tokens", type=int, help="padded tokens per forward pass")
    w.add_argument("--accept-shift", action="store_true", help=ACCEPT_SHIFT_HELP)
    w.add_argument("--add", action="store_true", help=ADD_HELP)
    w.add_argument("--sample-rate", type=float, default=1.0,
                   help="score this share of the documents, chosen by a keyed hash of (seed, id): the same sample on "
                        "any cluster, on resume and as the corpus grows; the others are read and counted, not scored")
    w.add_argument("--sample", type=int, help="score about this many documents (the rate is fixed when the run starts)")
    w.add_argument("--shard-rate", type=float, default=1.0,
                   help="first stage: read only this share of the input files, picked by a keyed hash of their "
                        "names; the others are never opened (for corpora too big to read)")
    w.add_argument("--sample-seed", type=int, default=0, help="the sample's key (default 0)")
    w.set_defaults(func=cmd_sweep)

    c = sub.add_parser("calibrate", help="fine-tune a copy of the model on a random half of held-out text (known "
                                         "members), and measure and calibrate the attack on it")
    _add_corpus_args(c, labels_by_default=False)
    c.add_argument("--model", help="hub id or local path of the causal LM to calibrate for")
    c.add_argument("--out", required=True, help="output folder (re-running resumes it): detector/, report.html")
    c.add_argument("--config", help="YAML or TOML scan options, the ones the sweep will use")
    c.add_argument("--method", default="lora", help="lora (default; peft) or full fine-tuning (small models)")
    c.add_argument("--epochs", type=int, default=1, help="passes over the exposure schedule (default 1)")
    c.add_argument("--lr", type=float, help="learning rate (default 5e-4 for lora, 5e-5 for full)")
    c.add_argument("--batch-size", type=int, default=8, help="texts per fine-tuning step (default 8)")
    c.add_argument("--exposures", type=_int_list, default=[1, 4, 16],
                   help="times each group of members is seen per epoch (default 1,4,16)")
    c.add_argument("--members-fraction", type=float, default=0.5, help="share of the texts made members (default 0.5)")
    c.add_argument("--seed", type=int, default=0, help="the members' split, the fine-tune and the evaluation (default 0)")
    c.add_argument("--neighbor-seed", type=int, help=NEIGHBOR_SEED_HELP)
    c.add_argument("--actors", type=int, help=ACTORS_HELP)
    c.set_defaults(func=cmd_calibrate)

    i = sub.add_parser("infer", help="dataset inference: a p-value for 'the model was trained on this set', "
                                     "against a reference set known unseen (exit 0 not shown, 1 seen, 2 invalid)")
    _add_corpus_args(i, labels=False, images=True)  # no labels: the suspect set is what is tested, the reference is unseen
    i.add_argument("--reference", nargs="+", required=True,
                   help="files of the same distribution as the suspect set that the model cannot have seen")
    i.add_argument("--model", help="hub id or local path of a causal LM (a vision-language model with --image-col)")
    i.add_argument("--out", required=True, help="output folder (re-running resumes the scans)")
    i.add_argument("--config", help="YAML or TOML file with scan options")
    i.add_argument("--detector", help="a `scanner train` / `calibrate` folder: adds its probability as a feature "
                                      "and estimates the seen fraction")
    i.add_argument("--kind", default="auto", choices=["auto", "fimmia", "tabular"])
    i.add_argument("--reference-model", help="a second model (a smaller one of the same family, or the previous "
                                             "checkpoint): each score's difference to it is a feature (MIMIR's Ref)")
    i.add_argument("--alpha", type=float, default=0.01, help="significance level of the verdict (default 0.01)")
    i.add_argument("--splits", type=int, default=10, help="random half-splits combined into the p-value (default 10)")
    i.add_argument("--neighbors", type=int, help="neighbors per text (default 24)")
    i.add_argument("--seed", type=int, default=0, help="the set test's random splits and the blind baseline (default 0)")
    i.add_argument("--neighbor-seed", type=int, help=NEIGHBOR_SEED_HELP + "; with --detector, the detector's")
    i.add_argument("--actors", type=int, help=ACTORS_HELP)
    i.set_defaults(func=cmd_infer)

    n = sub.add_parser("nightly", help="check a checkpoint's eval sets for contamination; compare with the last run "
                                       "(exit 0 clean, 1 contaminated or worse, 2 errors)")
    n.add_argument("--config", required=True, help="YAML/TOML: scan options plus detector, eval_sets, "
                                                   "contamination_threshold, max_increase")
    n.add_argument("--out", required=True, help="root folder: one subfolder per run, compared with the newest earlier one")
    n.add_argument("--model", help="checkpoint to check (overrides `model` in the config)")
    n.add_argument("--run-name", help="this run's subfolder (default: UTC date and time, sorts in run order)")
    n.add_argument("--previous", help="metrics.json to compare with (default: the newest earlier run in --out)")
    n.add_argument("--seed", type=int, default=0, help="the evaluation's and set tests' splits (default 0); the "
                                                       "neighbor seed is the detector's, or `neighbor_seed` in the config")
    n.add_argument("--accept-shift", action="store_true", help=ACCEPT_SHIFT_HELP)
    n.set_defaults(func=cmd_nightly)

    o = sub.add_parser("overlap", help="exact n-gram overlap: which eval items occur verbatim in a corpus, and where")
    _add_corpus_args(o, labels=False)
    o.add_argument("--corpus", nargs="+", required=True, help="the corpus: files, folders, globs or URIs")
    o.add_argument("--corpus-text-col", default=None, help="the corpus's text column (default: 'text', else 'input')")
    o.add_argument("--corpus-id-col", default=None, help="the corpus's id column (default: 'id', else a hash)")
    o.add_argument("--corpus-source-col", default=None, help="the corpus's source column (default: the file's path)")
    o.add_argument("--out", required=True, help="output folder (re-running resumes: finished shards are skipped)")
    o.add_argument("--add", action="store_true", help=ADD_HELP)
    o.add_argument("--n", type=int, default=13, help="words per n-gram (default 13, as lm-eval-harness and NeMo)")
    o.add_argument("--actors", type=int, help="shards matched at once (default: the cluster's CPUs)")
    o.add_argument("--shard-size", type=int, default=20_000, help="at most this many corpus rows per resumable shard "
                                                                   "(default 20000)")
    o.set_defaults(func=cmd_overlap)

    f = sub.add_parser("frequencies", help="count each token of a model's tokenizer over a reference corpus (DC-PDD's "
                                           "frequency table; resumable shard by shard)")
    _add_corpus_args(f, labels=False)
    f.add_argument("--model", required=True, help="hub id or local path: whose tokenizer counts")
    f.add_argument("--out", required=True, help="output folder (re-running resumes: finished shards are skipped)")
    f.add_argument("--add", action="store_true", help=ADD_HELP)
    f.add_argument("--revision", help="model revision (branch, tag or commit)")
    f.add_argument("--trust-remote-code", action="store_true", help="allow the model repo's own code (off by default)")
    f.add_argument("--actors", type=int, help="shards counted at once (default: the cluster's CPUs)")
    f.add_argument("--shard-size", type=int, default=20_000, help="at most this many rows per resumable shard "
                                                                   "(default 20000)")
    f.set_defaults(func=cmd_frequencies)

    h = sub.add_parser("hessian", help="test the Hessian explanation of perturbation attacks: trace and extreme "
                                       "eigenvalues of the input-space Hessian beside the attacks' AUCs")
    _add_corpus_args(h)
    h.add_argument("--model", required=True, help="hub id or local path of a causal LM")
    h.add_argument("--out", required=True, help="output folder (re-running resumes it)")
    h.add_argument("--scan", help="a `scanner scan` run of the same data: its neighborhood, LOSS and Min-K%%++ "
                                  "scores (default: LOSS and Min-K%%++ from this command's own forward passes)")
    h.add_argument("--probes", type=int, default=32, help="Rademacher probes per sample for the trace (default 32)")
    h.add_argument("--eigs", type=int, default=8, help="samples that also get the extreme eigenvalues (default 8)")
    h.add_argument("--lanczos-steps", type=int, default=20, help="Lanczos iterations per such sample (default 20)")
    h.add_argument("--max-tokens", type=int, default=128, help="tokens per text, the rest cut (default 128)")
    h.add_argument("--max-samples", type=int, help="a seeded subset of this many samples (default: all)")
    h.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"],
                   help="model precision for the second derivatives (default float32)")
    h.add_argument("--actors", type=int, help="model actors (default: one per GPU, else one)")
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--revision", help="model revision (branch, tag or commit)")
    h.add_argument("--adapter", help="a peft adapter folder (LoRA) to merge into the model, e.g. calibrate's fine-tune")
    h.add_argument("--trust-remote-code", action="store_true", help="allow the model repo's own code (off by default)")
    h.set_defaults(func=cmd_hessian)

    r = sub.add_parser("scores", help="the registered membership scores: name, direction, needs, version (a "
                                      "Markdown table, the README's)")
    r.add_argument("--module", action="append", default=[], help="also a score module of your own (importable name)")
    r.set_defaults(func=cmd_scores)

    d = sub.add_parser("demo", help="run the embedded default end to end (offline, ~4 minutes on 2 cores)")
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--neighbors", type=int, default=24)
    d.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "folds", 2) < 2:
        print("scanner: error: --folds must be at least 2", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        _check_out(getattr(args, "out", None))
        return args.func(args)
    except InputError as e:
        print(f"scanner: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _stop_ray()  # first: its workers' farewells would otherwise follow the one line below
        print("scanner: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def _stop_ray() -> None:
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


def _check_out(out: str | None) -> None:
    """--out names a folder (made if missing) or a URI: an existing file, or a place this process
    cannot write (read-only, no permission), is refused before any work."""
    if not out or "://" in out:
        return
    path = Path(out).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {out}: is a file, not a folder; give a folder (it is made if missing)")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"--out {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only file system" if _read_only(existing) else "no permission to write there"
        raise InputError(f"--out {out}: cannot be written ({why}: {existing})")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False

if __name__ == "__main__":
    sys.exit(main())
