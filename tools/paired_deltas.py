"""Paired differences of methods against their own base, from a `longtail compare` output.

For each pair (method, base) and each seed, the difference of the test metric on the same seed
(same split, initialisation and data order under --paired). Reported as mean ± sample std of the
per-seed differences and the number of seeds the method wins, which tells whether a gain is
larger than the seed-to-seed noise of the difference itself.

    python tools/paired_deltas.py runs/results/fashion-mnist-lt ccar_ce:ce ccar_bs:bs car:ce ...
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

# (metric key, column title, scale): accuracies and ECE in percentage points; the weighted
# hard-confusion spectral norm (what CAR minimises) as it is.
METRICS = (("accuracy", "Overall", 100), ("worst_class_accuracy", "Worst class", 100), ("ece", "ECE", 100),
           ("confusion_spectral_norm", "spectral norm", 1))


def load(output: Path) -> dict:
    plan = json.loads((output / "plan.json").read_text())
    results = {}
    for cell in plan["cells"]:
        metrics = json.loads((output / "cells" / cell["name"] / "metrics.json").read_text())["test"]
        results[(cell["imbalance_factor"], cell["method"], cell["seed"])] = metrics
    return results


def paired_table(results: dict, pairs: list[tuple[str, str]]) -> str:
    factors = sorted({key[0] for key in results}, key=lambda f: (f is None, f))
    seeds = sorted({key[2] for key in results})
    lines = ["| method vs base | IF | " + " | ".join(f"Δ {title}" for _, title, _ in METRICS) + " | wins (overall) |",
             "|---|---|" + "---|" * len(METRICS) + "---|"]
    for factor in factors:
        for method, base in pairs:
            cells = []
            for key, _, scale in METRICS:
                differences = [scale * (results[(factor, method, s)][key] - results[(factor, base, s)][key])
                               for s in seeds]
                spread = statistics.stdev(differences) if len(differences) > 1 else 0.0
                digits = 2 if scale == 100 else 3
                cells.append(f"{statistics.mean(differences):+.{digits}f} ± {spread:.{digits}f}")
            wins = sum(results[(factor, method, s)]["accuracy"] > results[(factor, base, s)]["accuracy"] for s in seeds)
            label = "-" if factor is None else f"{factor:g}"
            lines.append(f"| {method} vs {base} | {label} | " + " | ".join(cells) + f" | {wins}/{len(seeds)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="a `longtail compare --output` directory")
    parser.add_argument("pairs", nargs="+", help="METHOD:BASE pairs, e.g. ccar_bs:bs")
    args = parser.parse_args()
    pairs = [tuple(pair.rsplit(":", 1)) for pair in args.pairs]
    print(paired_table(load(args.output), pairs))


if __name__ == "__main__":
    main()
