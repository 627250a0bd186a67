"""The leakage baseline as one call: labelled samples in, metrics + verdict + per-sample scores out."""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import polars as pl

from scanner.baseline.features import compute_features, word_ngram_names
from scanner.baseline.image_features import BLOCKS, NAMES, ImageTextFeatures, compute_image_features
from scanner.baseline.models import GreedyNgramRules, candidates, image_text_candidates
from scanner.baseline.nested import nested_cv
from scanner.metrics import corrected_cv_interval, roc_auc, summarize

# A blind classifier whose AUC CI lies wholly above this separates the split by text alone.
LEAKY_AUC = 0.6
TOP_NGRAMS = 10
CI_METHOD = ("the wider of a stratified bootstrap over the samples' out-of-fold scores and a t-interval over the "
             "outer folds' AUCs corrected for their overlapping training sets (Nadeau & Bengio 2003)")


@dataclass
class BaselineOutput:
    metrics: dict  # what metrics.json holds
    scores: pl.DataFrame  # sample_id, source, label, score (out-of-fold P(member)), per-family scores


def verdict(auc_ci: list[float], data: str = "text") -> dict:
    """`data`: what the classifier read ("text", "image and caption")."""
    lo, hi = auc_ci
    ci = f"95% CI [{lo:.3f}, {hi:.3f}]"
    if lo > LEAKY_AUC:
        return {
            "status": "leaky",
            "usable_for_mia": False,
            "text": (
                f"NOT usable for membership inference: a classifier that never sees the model tells "
                f"members from non-members by their {data} alone ({ci}, above {LEAKY_AUC}). The split is "
                f"distribution-shifted, so an MIA score on it measures that shift, not memorisation."
            ),
        }
    if lo > 0.5:
        return {
            "status": "shifted",
            "usable_for_mia": True,
            "text": (
                f"Usable with care: the {data} alone separates members a little better than chance "
                f"({ci}). An MIA result on this split counts only where it clearly beats this "
                f"baseline's AUC."
            ),
        }
    return {
        "status": "usable",
        "usable_for_mia": True,
        "text": (
            f"Usable for membership inference: no model-free classifier separated members from "
            f"non-members by their {data} better than chance ({ci} includes 0.5 or lies below it)."
            + (" An interval below 0.5 is not a signal either: a classifier that learns nothing scores "
               "around 0.5, and cross-validation on small or clustered sets (alike images, one topic) "
               "scatters widely around it." if hi < 0.5 else "")
        ),
    }


def _top_ngrams(texts: list[str], word, y: np.ndarray) -> dict[str, list[dict]]:
    """The strongest greedy rules fitted on all rows: an explanation of *what* leaks, not an
    evaluation (the evaluation is the nested CV)."""
    rules = GreedyNgramRules(fpr_budget=0.05).fit(word, y).rules_
    top = {cls: np.argsort(-weights)[:TOP_NGRAMS] for cls, (_, weights) in rules.items()}
    names = word_ngram_names(texts, word, {int(rules[cls][0][i]) for cls, order in top.items() for i in order})
    out = {}
    for cls, key in ((1, "member"), (0, "non_member")):
        cols, weights = rules[cls]
        order = top[cls]
        present = np.asarray((word[:, cols[order]] > 0).sum(axis=0)).ravel() if len(cols) else []
        out[key] = [
            {"ngram": " | ".join(names.get(int(cols[i]), [])) or f"#{int(cols[i])}",
             "log_odds": round(float(weights[i]), 3), "documents": int(n)}
            for i, n in zip(order, present)
        ]
    return out


def top_image_features(blocks: dict[str, np.ndarray], y: np.ndarray, top: int = TOP_NGRAMS) -> list[dict]:
    """The image features that alone best tell the classes apart (AUC of each feature over all
    rows, as far from 0.5 as it gets): an explanation, not an evaluation."""
    from sklearn.metrics import roc_auc_score

    rows = []
    for block in BLOCKS:
        X = blocks[block]
        for j, name in enumerate(NAMES[block]):
            if np.ptp(X[:, j]) > 0:
                auc = roc_auc_score(y, X[:, j])
                rows.append({"feature": name, "block": block, "auc": round(float(auc), 4),
                             "member_mean": float(X[y == 1, j].mean()), "non_member_mean": float(X[y == 0, j].mean())})
    return sorted(rows, key=lambda r: -abs(r["auc"] - 0.5))[:top]


def summarize_cv(y: np.ndarray, scores: np.ndarray, fold_aucs: list[float], test_train_ratio: float,
                 n_boot: int, seed: int) -> dict:
    """summarize(), with an interval that also covers the variance of the cross-validation."""
    m = summarize(y, scores, n_boot=n_boot, seed=seed)
    if len(fold_aucs) < 2:  # (a subset that holds both classes in under two folds)
        return m | {"auc_ci_bootstrap": m["auc_ci"], "auc_ci_cv": None}
    cv = corrected_cv_interval(m["auc"], fold_aucs, test_train_ratio)
    boot = m["auc_ci"]
    return m | {"auc_ci": [min(boot[0], cv[0]), max(boot[1], cv[1])], "auc_ci_bootstrap": boot,
                "auc_ci_cv": list(cv)}


def summarize_by_fold(y: np.ndarray, scores: np.ndarray, fold: np.ndarray, n_boot: int, seed: int) -> dict:
    """summarize_cv() of out-of-fold scores on some of the samples they were computed for (the
    test part of a split): each fold's AUC over those of its samples that are here."""
    k = int(fold.max())
    aucs = [roc_auc(y[fold == f], scores[fold == f]) for f in range(1, k + 1)
            if 0 < y[fold == f].sum() < (fold == f).sum()]
    return summarize_cv(y, scores, aucs, 1 / (k - 1), n_boot, seed)


def text_groups(texts: list[str], y: np.ndarray, images: list | None = None) -> tuple[np.ndarray | None, dict]:
    """Samples whose texts are the same (whitespace aside; with images, the image too) form one
    cross-validation group, or None when every text is distinct (the folds then stay as they
    always were); and how many texts repeat, and how many of those carry both labels (the same
    text called a member and a non-member: a model that memorised one copy would call the other
    leaky)."""
    keys = [" ".join(t.split()) for t in texts]
    if images is not None:
        keys = [k + "\0" + hashlib.sha256(im or b"").hexdigest() for k, im in zip(keys, images)]
    codes = np.unique(np.asarray(keys, dtype=object), return_inverse=True)[1].astype(np.int64)
    labels = pl.DataFrame({"g": codes, "y": y}).group_by("g").agg(pl.len().alias("n"), pl.col("y").n_unique().alias("k"))
    repeated = labels.filter(pl.col("n") > 1)
    twins = {"texts_repeated": repeated.height, "in_both_classes": int((repeated["k"] > 1).sum())}
    return (codes if repeated.height else None), twins


def run_baseline(
    samples: pl.DataFrame,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    n_jobs: int | None = None,
    repeats: int = 1,
    progress: Callable[[str], None] = lambda msg: None,
) -> BaselineOutput:
    """`repeats`: how many times the outer folds are drawn. More draws steady each sample's score
    and give the corrected CV interval more folds to estimate its variance from (3 draws narrow it
    by about a third on small sets), at that many times the cost."""
    t0 = time.perf_counter()
    texts = samples["text"].to_list()
    y = samples["label"].to_numpy().astype(np.int64)
    progress(f"features for {len(texts)} texts (hashed word 1-2-grams, char 3-5-grams, years)")
    feats, make_candidates = compute_features(texts, n_jobs=n_jobs), candidates
    if "image" in samples.columns:
        progress(f"features for {len(texts)} images (colour, spectrum, texture, HOG, format and metadata)")
        feats = ImageTextFeatures(feats, compute_image_features(samples["image"].to_list(), n_jobs=n_jobs))
        make_candidates = image_text_candidates
    progress(f"nested cross-validation: {folds} outer folds x 3 inner folds" + (f", {repeats} repeats" if repeats > 1 else ""))
    groups, twins = text_groups(texts, y, samples["image"].to_list() if "image" in samples.columns else None)
    if twins["in_both_classes"]:
        progress(f"{twins['in_both_classes']} text(s) appear as a member and as a non-member: kept, each text's "
                 "copies in one fold")
    result = nested_cv(feats, y, folds=folds, seed=seed, repeats=repeats, make_candidates=make_candidates,
                       n_jobs=n_jobs, progress=progress, groups=groups)
    progress(f"CIs ({n_boot} bootstrap resamples, corrected CV interval) and explanations")
    ratio = result.test_train_ratio
    with ThreadPoolExecutor(n_jobs or len(os.sched_getaffinity(0))) as pool:  # numpy releases the GIL: ~1.5x on 2 cores
        explained = pool.submit(_top_ngrams, texts, feats.word, y)
        head = pool.submit(summarize_cv, y, result.scores, result.fold_aucs(), ratio, n_boot, seed)
        models = {fam: pool.submit(summarize_cv, y, s, result.fold_aucs(fam), ratio, n_boot, seed)
                  for fam, s in result.family_scores.items()}
        head, models, explained = head.result(), {fam: m.result() for fam, m in models.items()}, explained.result()
    metrics = {
        "task": "leakage_baseline",
        **head,
        "best_model": result.best_model,
        "verdict": verdict(head["auc_ci"], "image and caption" if "image" in samples.columns else "text"),
        "selection": "nested cross-validation; headline = out-of-fold scores of the model chosen "
                     "on inner folds of each outer training set" + (f", averaged over {repeats} draws of the "
                                                                     "outer folds" if repeats > 1 else ""),
        "auc_ci_method": CI_METHOD,
        "models": models,
        "folds": result.folds,
        "repeated_texts": twins,
        "top_ngrams": explained,
        **({"top_image_features": top_image_features(feats.image, y)} if "image" in samples.columns else {}),
        "config": {"folds": folds, "inner_folds": 3, "repeats": repeats, "seed": seed, "n_boot": n_boot},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    scores = samples.select("sample_id", "source", "label").with_columns(
        pl.Series("fold", result.fold_of),
        pl.Series("score", result.scores),
        *[pl.Series(f"score_{fam}", s) for fam, s in result.family_scores.items()],
    )
    return BaselineOutput(metrics=metrics, scores=scores)
