"""metrics.json, report.md and report.html, all rendered from one list of blocks so the two
reports always say the same thing."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scanner.metrics import roc_points  # noqa: E402

# Blocks: ("h1"|"h2", text), ("p", text), ("table", header, rows), ("img", name, png_bytes),
# ("details", summary, [blocks]): folded away in the HTML report (a <details> element)

# Curves told apart by colour and line style together: 10 colours x 4 styles, no pair repeats.
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f"]
LINE_STYLES = ["-", "--", "-.", ":"]
BOLD = re.compile(r"[*][*](.+?)[*][*]")  # **text** in a paragraph: bold in the HTML report


def curve_styles(names: list[str]) -> dict[str, tuple[str, str]]:
    """A distinct (colour, line style) per curve, the colours first, then the styles."""
    if len(names) > len(COLOURS) * len(LINE_STYLES):
        raise ValueError(f"{len(names)} curves are more than can be told apart; plot fewer")
    return {n: (COLOURS[i % len(COLOURS)], LINE_STYLES[i // len(COLOURS)]) for i, n in enumerate(names)}


def fmt(x) -> str:
    """The one number format shared by report.md and report.html (3 decimals)."""
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def fmt_auc(m: dict) -> str:
    lo, hi = m["auc_ci"]
    return f"{fmt(m['auc'])} [{fmt(lo)}, {fmt(hi)}]"


def fmt_fraction(e: dict | None, missing: str = "not estimable") -> str:
    """A contamination estimate (scanner.contamination) as "0.120 [0.080, 0.170]"."""
    if not e or not e["estimable"]:
        return missing
    return f"{fmt(e['estimate'])} [{fmt(e['ci'][0])}, {fmt(e['ci'][1])}]"


def fmt_tpr(m: dict, fpr: str) -> str:
    value = fmt(m["tpr_at_fpr"][fpr])
    return value if m["tpr_at_fpr_estimable"][fpr] else f"{value}*"


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def roc_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], loglog: bool, title: str | None = None,
            size: tuple[float, float] = (5.5, 5)) -> bytes:
    """ROC curves, each in its own colour and line style (curve_styles), AUCs in the legend; the
    first curve is the headline and drawn thicker."""
    from scanner.metrics import roc_auc

    fig, ax = plt.subplots(figsize=size)
    styles = curve_styles(list(curves))
    for i, (name, (y, s)) in enumerate(curves.items()):
        fpr, tpr = roc_points(y, s)
        colour, line = styles[name]
        ax.step(fpr, tpr, where="post", label=f"{name} (AUC {roc_auc(y, s):.3f})", color=colour, linestyle=line,
                linewidth=2.4 if i == 0 else 1.4)
    if loglog:
        n0 = min(int((np.asarray(y) == 0).sum()) for y, _ in curves.values())
        lo = 0.5 / max(n0, 1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, 1)
        ax.set_ylim(lo, 1.02)
        ax.plot([lo, 1], [lo, 1], "k:", linewidth=0.8)
    else:
        ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (non-members flagged)")
    ax.set_ylabel("true positive rate (members flagged)")
    ax.set_title(title or ("ROC, log-log axes" if loglog else "ROC"), fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def forest_png(estimates: dict[str, dict | None], title: str, threshold: float | None = None) -> bytes:
    """One row per source or set: the estimated seen fraction and its 95% interval
    (scanner.contamination), the contamination threshold as a dashed line; rows without an
    estimate are named, not drawn."""
    names = list(estimates)
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.42 * len(names)))
    for row, name in enumerate(names):
        e = estimates[name]
        if e and e.get("estimable"):
            ax.errorbar(e["estimate"], row, xerr=[[e["estimate"] - e["ci"][0]], [e["ci"][1] - e["estimate"]]],
                        fmt="o", color=COLOURS[0], ecolor=COLOURS[0], capsize=3)
        else:
            ax.text(0.01, row, "not estimable", va="center", fontsize=8, color="#7f7f7f")
    if threshold is not None:
        ax.axvline(threshold, color=COLOURS[1], linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=9)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlim(-0.02, 1.02)  # an estimate of 0 or 1 stays visible
    ax.set_xlabel("estimated seen fraction (95% interval)")
    ax.set_title(title, fontsize=10)
    return _png(fig)


def trend_png(trend: dict[str, list[dict]], threshold: float | None = None) -> bytes:
    """A small chart per set: its estimate and 95% interval in each run, oldest first."""
    names = [n for n, points in trend.items() if points]
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(np.ravel(axes), names):
        points = trend[name]
        x = np.arange(len(points))
        est = np.array([p["estimate"] for p in points])
        ax.fill_between(x, [p["ci"][0] for p in points], [p["ci"][1] for p in points], color=COLOURS[0], alpha=0.2)
        ax.plot(x, est, "o-", color=COLOURS[0], markersize=3)
        if threshold is not None:
            ax.axhline(threshold, color=COLOURS[1], linestyle="--", linewidth=1)
        ax.set_xticks(x, [p["run"] for p in points], rotation=45, ha="right", fontsize=7)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(name, fontsize=10)
    for ax in np.ravel(axes)[len(names):]:
        ax.axis("off")
    np.ravel(axes)[0].set_ylabel("seen fraction")
    return _png(fig)


def line_png(series: dict[str, list[float]], xlabel: str, ylabel: str) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, ys in series.items():
        ax.plot(range(1, len(ys) + 1), ys, linewidth=1.2, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _png(fig)


def two_histograms_png(series: dict[str, list[float]], xlabel: str) -> bytes:
    """Overlaid histograms of a few samples on shared bins."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bins = np.histogram_bin_edges(np.concatenate([np.asarray(v, float) for v in series.values()]), bins=30)
    for name, values in series.items():
        ax.hist(values, bins=bins, alpha=0.55, label=f"{name} ({len(values)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    return _png(fig)


def _md(blocks) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {b[1]}\n")
        elif kind == "h2":
            out.append(f"## {b[1]}\n")
        elif kind == "p":
            out.append(f"{b[1]}\n")
        elif kind == "table":
            header, rows = b[1], b[2]
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" * len(header))
            out.extend("| " + " | ".join(str(c) for c in r) + " |" for r in rows)
            out.append("")
        elif kind == "img":
            out.append(f"![{b[1]}]({b[1]})\n")
        elif kind == "details":
            out.append(f"### {b[1]}\n")
            out.append(_md(b[2]))
    return "\n".join(out)


def _html_body(blocks) -> str:
    body = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(b[1])}</{kind}>")
        elif kind == "p":
            body.append("<p>" + BOLD.sub(r"<strong>\1</strong>", html.escape(b[1])) + "</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(b[2]).decode("ascii")
            body.append(f'<img alt="{html.escape(b[1])}" src="data:image/png;base64,{data}">')
        elif kind == "details":
            body.append(f"<details><summary>{html.escape(b[1])}</summary>{_html_body(b[2])}</details>")
    return "\n".join(body)


def _html(blocks, title: str) -> str:
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}th{background:#f3f3f3}img{max-width:47%;margin:0 1%;vertical-align:top}"
        "img[alt^='headline']{max-width:60%;display:block;margin:1em auto}"
        "details{margin:1em 0}summary{cursor:pointer;font-weight:600}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + _html_body(blocks) + "\n</body></html>\n"
    )


def _flat(blocks) -> list:
    return [x for b in blocks for x in (_flat(b[2]) if b[0] == "details" else [b])]


def render_report(title: str, blocks: list, metrics: dict) -> dict[str, bytes]:
    """{file name: content}: metrics.json, report.md, report.html and the images."""
    files = {"metrics.json": (json.dumps(metrics, indent=2, sort_keys=False) + "\n").encode()}
    files |= {b[1]: b[2] for b in _flat(blocks) if b[0] == "img"}
    files["report.md"] = _md([("h1", title)] + blocks).encode()
    files["report.html"] = _html([("h1", title)] + blocks, title).encode()
    return files


def write_report(out_dir: Path, title: str, blocks: list, metrics: dict) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in render_report(title, blocks, metrics).items():
        (out_dir / name).write_bytes(data)
    return {"metrics": out_dir / "metrics.json", "md": out_dir / "report.md", "html": out_dir / "report.html"}


TPR_NOTE = (
    "TPR at FPR uses the stepped convention (best TPR of any threshold whose empirical FPR is at or "
    "below the target; no interpolation). * = not estimable: fewer than 10/FPR non-members, so the "
    "value rests on under ten false positives."
)


def baseline_blocks(metrics: dict, curves: dict, inputs: list[str], counts: dict) -> list:
    fprs = list(metrics["tpr_at_fpr"])
    v = metrics["verdict"]
    blocks = [
        ("p", f"**Verdict: {v['status']}.** {v['text']}"),
        ("p", f"Inputs: {', '.join(inputs)}"),
        ("table", ["n", "members", "non-members", "AUC [95% CI]"] + [f"TPR@{float(f):.1%} FPR" for f in fprs] + ["best model"],
         [[metrics["n"], metrics["n_members"], metrics["n_nonmembers"], fmt_auc(metrics)]
          + [fmt_tpr(metrics, f) for f in fprs] + [metrics["best_model"]]]),
        ("p", "Headline: out-of-fold scores of the model chosen by nested cross-validation (chosen on "
              "inner folds of each outer training set; outer folds only evaluate)."),
        ("h2", "Model families"),
        ("p", "Each family with its hyper-parameters chosen on inner folds, evaluated on the outer folds. "
              "Picking the best row here would be selection on the test folds: the headline does not."),
        ("table", ["model", "AUC [95% CI]"] + [f"TPR@{float(f):.1%}" for f in fprs],
         [[fam, fmt_auc(m)] + [fmt_tpr(m, f) for f in fprs] for fam, m in metrics["models"].items()]),
        ("img", "roc.png", roc_png(curves, loglog=False)),
        ("img", "roc_loglog.png", roc_png(curves, loglog=True)),
        ("h2", "Outer folds"),
        ("table", ["fold", "train", "test", "chosen", "inner AUC", "outer AUC", "seconds"],
         [[f["fold"], f["n_train"], f["n_test"], f["chosen"], fmt(f["chosen_inner_auc"]), fmt(f["outer_auc"]), f["seconds"]]
          for f in metrics["folds"]]),
        ("h2", "What gives the split away"),
        ("p", "Strongest n-gram rules (greedy selection at 5% FPR, fitted on all rows; an explanation, not an evaluation)."),
    ]
    for key, label in (("member", "members"), ("non_member", "non-members")):
        rows = [[r["ngram"], fmt(r["log_odds"]), r["documents"]] for r in metrics["top_ngrams"][key]]
        blocks.append(("table", [f"n-gram pointing to {label}", "log-odds", "documents"], rows or [["(none)", "", ""]]))
    blocks += [
        ("h2", "Data"),
        ("table", ["read", "kept", "quarantined"] + list(counts["quarantined_by_reason"]),
         [[counts["read"], counts["kept"], counts["quarantined"]] + list(counts["quarantined_by_reason"].values())]),
        ("p", TPR_NOTE),
    ]
    return blocks
