"""Reports that read at a glance: distinct curves, family-best scores, numeric length order,
folded details."""

import numpy as np
import pytest

from scanner.evaluate import _breakdown, _length_bucket, headline_scores, length_bucket_names
from scanner.report import curve_styles, render_report, roc_png


def test_every_curve_gets_its_own_colour_and_line_style():
    names = [f"s{i}" for i in range(19)]  # 16 classic scores, two detectors, the baseline
    styles = curve_styles(names)
    assert len(set(styles.values())) == len(names)
    with pytest.raises(ValueError, match="more than can be told apart"):
        curve_styles([f"s{i}" for i in range(41)])


def test_the_plots_show_each_family_best_and_keep_everything_else():
    auc = {"loss": .7, "zlib_ratio": .6, "min_k_5": .65, "min_k_20": .72, "min_k_pp_5": .8, "min_k_pp_50": .75,
           "neighborhood": .69, "fimmia detector": .81, "tabular detector": .79, "blind baseline": .52}
    shown = headline_scores({k: {"auc": v} for k, v in auc.items()})
    assert shown == ["loss", "zlib_ratio", "min_k_20", "min_k_pp_5", "neighborhood", "fimmia detector",
                     "tabular detector", "blind baseline"]


def test_length_buckets_are_in_numeric_order():
    n = np.array([300, 20, 150, 70, 500, 10, 200, 90])  # sorted as strings, "128-255" would come before "64-127"
    y = np.array([1, 0, 1, 0, 0, 1, 0, 1])
    rows = _breakdown(y, {"s": np.arange(8.0)}, _length_bucket(n), length_bucket_names())
    assert [r["group"] for r in rows] == ["0-63", "64-127", "128-255", ">=256"]


def test_folded_details_render_in_html_and_markdown_and_their_images_are_written():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    png = roc_png({"a": (y, rng.normal(size=200) + y), "b": (y, rng.normal(size=200))}, loglog=False)
    files = render_report("t", [("p", "**Seen.** more"), ("details", "more plots", [("img", "x.png", png)])], {})
    html = files["report.html"].decode()
    assert "<details><summary>more plots</summary>" in html and "<strong>Seen.</strong>" in html
    assert files["x.png"] == png and "### more plots" in files["report.md"].decode()
