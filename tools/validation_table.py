"""Validation-split accuracy of each method of a `longtail compare` output (for choices made on
validation data, never on test), read from the cells' history.jsonl.

The cells must have been trained with a validation split (data.validation_per_class=N) and
train.select_on set, so that every epoch is evaluated on it. Reported per method: the last epoch's
validation accuracy (overall; balanced by construction when the split holds N images per class),
its worst class, and the best epoch's, as mean ± sample std over seeds.

    python tools/validation_table.py runs/concutmix-results/omega-val
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from per_class_table import spread  # tools/ is the script directory: one formatting of mean ± std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="a `longtail compare` output directory")
    args = parser.parse_args()
    plan = json.loads((args.output / "plan.json").read_text())
    rows: dict[str, dict[str, list[float]]] = {}
    for cell in plan["cells"]:
        history = [json.loads(line) for line in (args.output / "cells" / cell["name"] / "history.jsonl").read_text().splitlines()]
        validation = [record["val"] for record in history if "val" in record]
        if not validation:
            raise SystemExit(f"{cell['name']} has no validation records: train it with data.validation_per_class=N "
                             f"and train.select_on=accuracy")
        row = rows.setdefault(cell["method"], {"last": [], "worst": [], "best": []})
        row["last"].append(validation[-1]["accuracy"])
        row["worst"].append(validation[-1]["worst_class_accuracy"])
        row["best"].append(max(v["accuracy"] for v in validation))
    print("| method | val accuracy (last epoch) | val worst class (last epoch) | val accuracy (best epoch) | seeds |")
    print("|---|---|---|---|---|")
    for method, row in rows.items():
        print(f"| {method} | {spread(row['last'])} | {spread(row['worst'])} | {spread(row['best'])} | {len(row['last'])} |")


if __name__ == "__main__":
    main()
