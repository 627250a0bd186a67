"""The README's "attack x exposure" table from a `scanner calibrate` folder: every score and
detector the calibration reported, per exposure group (its members against all non-members),
AUC [95% CI] and TPR at 1% FPR (* where 1% FPR is not estimable from the non-members), sorted by
the AUC at the lowest exposure; the blind baseline last. Then, per group, the tabular detector
against the best single score among its inputs (the issue's bound: at most 0.005 below).

    python bench/attack_table.py CALIBRATE_DIR [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scanner.evaluate import BASELINE
from scanner.report import fmt_auc, fmt_tpr


def table(metrics: dict) -> str:
    groups = [g for g in metrics["by_exposure"] if g != "overall"]
    groups.sort(key=lambda g: int(g.split()[1][:-1]))
    by = metrics["by_exposure"]
    left_out = set(metrics.get("reference", {}).get("left_out_of_detectors") or [])
    names = sorted((n for n in by[groups[0]] if n != BASELINE), key=lambda n: -by[groups[0]][n]["auc"]) + [BASELINE]
    rows = ["| score | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for n in names:
        label = n + (" (reference = the model calibrated)" if n in left_out else "")
        rows.append(f"| {label} | " + " | ".join(f"{fmt_auc(by[g][n])}, {fmt_tpr(by[g][n], '0.01')}" for g in groups) + " |")
    return "\n".join(rows)


def detector_margins(metrics: dict) -> str:
    """Per exposure group: the tabular detector's AUC minus the best single score's, among the
    scores it could take (a reference score of the model calibrated is not one)."""
    left_out = set(metrics.get("reference", {}).get("left_out_of_detectors") or [])
    lines = []
    for group, s in metrics["by_exposure"].items():
        singles = {n: v["auc"] for n, v in s.items() if "detector" not in n and n != BASELINE and n not in left_out}
        best = max(singles, key=singles.get)
        tabular = s["tabular detector"]["auc"]
        lines.append(f"{group}: tabular detector {tabular:.3f}, best single score {best} {singles[best]:.3f}, "
                     f"margin {tabular - singles[best]:+.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--json", help="also write the groups' metrics here")
    args = parser.parse_args()
    m = json.loads((Path(args.folder) / "metrics.json").read_text())
    print(table(m))
    print(f"\ntabular detector form: {m['detectors']['tabular'].get('form')}")
    print(detector_margins(m))
    if args.json:
        Path(args.json).write_text(json.dumps({"by_exposure": m["by_exposure"], "reference": m.get("reference"),
                                               "detectors": m["detectors"], "model": m["model"]}, indent=1))
