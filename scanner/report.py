"""metrics.json, report.md and report.html, all rendered from one list of blocks so the two
reports always say the same thing."""

from __future__ import annotations

import base64
import html
import io
import json
import re

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scanner.metrics import roc_points  # noqa: E402
from scanner.storage import Store  # noqa: E402

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
    """A contamination estimate (scanner.contamination) as "0.120 [0.080, 0.170]", and its range
    over the calibrated exposures where it has one."""
    if not e or not e["estimable"]:
        return missing
    said = f"{fmt(e['estimate'])} [{fmt(e['ci'][0])}, {fmt(e['ci'][1])}]"
    if "ci_over_exposures" in e:
        lo, hi = e["ci_over_exposures"]
        said += f" ([{fmt(lo)}, {fmt(hi)}] over the calibrated exposures)"
    return said


def exposure_sentence(e: dict | None) -> str | None:
    """What a report says about an estimate's range over the calibrated exposures (None: none)."""
    if not e or "by_exposure" not in e:
        return None
    groups = "; ".join(f"{name} (TPR {fmt(g['tpr'])}): "
                       + (f"{fmt(g['estimate'])} [{fmt(g['ci'][0])}, {fmt(g['ci'][1])}]" if g["ci"] else "not estimable")
                       for name, g in e["by_exposure"].items())
    lo, hi = e["ci_over_exposures"]
    return ("How often the model saw the documents it saw is not known, and the TPR depends on it, so the estimate "
            f"is also made with each calibrated exposure group's TPR: {groups}. The range over them, [{fmt(lo)}, "
            f"{fmt(hi)}], is the answer that does not assume an exposure; a group the detector cannot see leaves its "
            "top at 1.")


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
    """draw_roc as a PNG."""
    fig, ax = plt.subplots(figsize=size)
    draw_roc(ax, curves, loglog)
    ax.set_title(title or ("ROC, log-log axes" if loglog else "ROC"), fontsize=10)
    return _png(fig)


def draw_roc(ax, curves: dict[str, tuple[np.ndarray, np.ndarray]], loglog: bool) -> None:
    """ROC curves, each in its own colour and line style (curve_styles), AUCs in the legend; the
    first curve is the headline and drawn thicker."""
    from scanner.metrics import roc_auc

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
    ax.legend(loc="lower right", fontsize=8)


def fraction_rows(estimates: dict[str, dict | None]) -> dict[str, tuple[float, float, float] | None]:
    """Contamination estimates (scanner.contamination) as forest rows; not estimable -> None."""
    return {n: (e["estimate"], *e["ci"]) if e and e.get("estimable") else None for n, e in estimates.items()}


def forest_png(rows: dict[str, tuple[float, float, float] | None], title: str,
               xlabel: str = "estimated seen fraction (95% interval)", line: float | None = None,
               line_label: str | None = None, xlim: tuple[float, float] | None = (-0.02, 1.02),
               marks: dict[str, float] | None = None, marks_label: str | None = None) -> bytes:
    """One row per source, set, split or score: an estimate and its 95% interval; a reference
    line (a threshold, chance, zero) dashed; optional hollow marks beside the estimates (e.g. the
    raw flag rate). Rows without an estimate are named, not drawn."""
    names = list(rows)
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.42 * len(names)))
    for row, name in enumerate(names):
        if rows[name] is None:
            ax.text(0.01, row, "not estimable", va="center", fontsize=8, color="#7f7f7f", transform=ax.get_yaxis_transform())
            continue
        est, lo, hi = rows[name]
        ax.errorbar(est, row, xerr=[[est - lo], [hi - est]], fmt="o", color=COLOURS[0], ecolor=COLOURS[0], capsize=3,
                    label="estimate, 95% interval" if marks and row == 0 else None)
    if marks:
        at = [(names.index(n), x) for n, x in marks.items() if n in names]
        ax.plot([x for _, x in at], [r for r, _ in at], "D", mfc="none", color=COLOURS[3], label=marks_label)
    if line is not None:
        ax.axvline(line, color=COLOURS[1], linestyle="--", linewidth=1, label=line_label)
    if marks or line_label:
        ax.legend(loc="best", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=9)
    ax.set_ylim(len(names) - 0.5, -0.5)
    if xlim:
        ax.set_xlim(*xlim)  # a fraction of 0 or 1 stays visible
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def shares_png(rows: dict[str, dict[str, float]], title: str, xlabel: str) -> bytes:
    """Horizontal grouped bars: per row (an eval set) one bar per share, the value written beside it."""
    names = list(rows)
    keys = list(next(iter(rows.values()))) if rows else []
    height = 0.8 / max(len(keys), 1)
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.25 * len(names) * max(len(keys), 1)))
    for k, key in enumerate(keys):
        y = np.arange(len(names)) + (k - (len(keys) - 1) / 2) * height
        values = [rows[n][key] for n in names]
        ax.barh(y, values, height=height * 0.9, color=COLOURS[k % len(COLOURS)], label=key)
        for yy, v in zip(y, values):
            ax.text(v + 0.01, yy, f"{v:.1%}", va="center", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=9)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
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


def write_report(out, title: str, blocks: list, metrics: dict) -> dict[str, str]:
    """The report files in `out` (a local path, a URI or a scanner.storage.Store); their URIs."""
    store = out if isinstance(out, Store) else Store(str(out))
    store.write_files(render_report(title, blocks, metrics))
    return {key: store.uri_of(name) for key, name in
            (("metrics", "metrics.json"), ("md", "report.md"), ("html", "report.html"))}


TPR_NOTE = (
    "TPR at FPR uses the stepped convention (best TPR of any threshold whose empirical FPR is at or "
    "below the target; no interpolation). * = not estimable: fewer than 10/FPR non-members, so the "
    "value rests on under ten false positives."
)
