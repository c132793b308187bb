"""Per-class test accuracy of each method of a `longtail compare` output, as seed means, beside the
overall and worst-class accuracy (mean ± sample std over seeds) and the training-split accuracy
(how far from fitting its training data each method got).

    python tools/per_class_table.py runs/concutmix-results/grid [--methods bs,ccar_bs]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{100 * mean:.2f} ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else f"{100 * mean:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="a `longtail compare` output directory")
    parser.add_argument("--methods", help="comma-separated subset, in this order (default: all, plan order)")
    args = parser.parse_args()
    plan = json.loads((args.output / "plan.json").read_text())
    wanted = args.methods.split(",") if args.methods else None
    rows: dict[str, list[dict]] = {}
    for cell in plan["cells"]:
        if wanted and cell["method"] not in wanted:
            continue
        metrics = args.output / "cells" / cell["name"] / "metrics.json"
        if not metrics.exists():
            raise SystemExit(f"{cell['name']} has not finished ({metrics} is missing)")
        rows.setdefault(cell["method"], []).append(json.loads(metrics.read_text()))
    methods = wanted or list(rows)
    first = rows[methods[0]][0]["per_class"]
    header = " | ".join(f"{c['class']} ({c['train_images']})" for c in first)
    print(f"| method | Overall | {header} | Worst | ECE | train accuracy | seeds |")
    print("|---|---|" + "---|" * len(first) + "---|---|---|---|")
    for method in methods:
        runs = rows[method]
        per_class = [statistics.fmean(run["per_class"][j]["test_accuracy"] for run in runs) for j in range(len(first))]
        cells = " | ".join(f"{100 * value:.1f}" for value in per_class)
        train = [run["train"]["accuracy"] for run in runs if "train" in run]
        print(f"| {method} | {spread([r['test']['accuracy'] for r in runs])} | {cells} | "
              f"{spread([r['test']['worst_class_accuracy'] for r in runs])} | {spread([r['test']['ece'] for r in runs])} | "
              f"{spread(train) if train else '-'} | {len(runs)} |")


if __name__ == "__main__":
    main()
