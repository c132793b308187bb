"""Paired differences of methods against their own base, from a `longtail compare` output.

For each pair (method, base) and each seed both have finished, the difference of a test metric on
the same seed (same split, initialisation and data order under --paired). Reported as mean ± sample
std of the per-seed differences (the difference alone where one seed is paired: it has no spread)
and the number of seeds the method wins (k/n, n = the seeds both cells have: a grid still running
gives the finished pairs only), which tells whether a gain is larger than the seed-to-seed noise of
the difference itself.

    python tools/paired_deltas.py runs/results/fashion-mnist-lt ccar_ce:ce ccar_la:la ccar_bs:bs car:ce ...
    python tools/paired_deltas.py GRID ccar_bs:bs car_bs:bs --metrics balanced,many,medium,few,worst \\
        --wins-on balanced --paper ccar_bs:bs=+3.91 --paper car_bs:bs=n/a
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

# name -> (metric key in metrics.json, column title, scale): accuracies and ECE in percentage
# points; the weighted hard-confusion spectral norm (what CAR minimises) as it is.
METRICS = {
    "overall": ("accuracy", "Overall", 100),
    "balanced": ("balanced_accuracy", "Balanced", 100),
    "many": ("many_accuracy", "Many", 100),
    "medium": ("medium_accuracy", "Medium", 100),
    "few": ("few_accuracy", "Few", 100),
    "worst": ("worst_class_accuracy", "Worst class", 100),
    "ece": ("ece", "ECE", 100),
    "spectral": ("confusion_spectral_norm", "spectral norm", 1),
}
DEFAULT_METRICS = ("overall", "worst", "ece", "spectral")


def load(output: Path) -> dict:
    """(imbalance factor, method, seed) -> test metrics of every finished cell of the grid."""
    plan = json.loads((output / "plan.json").read_text())
    results = {}
    for cell in plan["cells"]:
        path = output / "cells" / cell["name"] / "metrics.json"
        if path.is_file():  # a cell still training (or not started) has none yet
            results[(cell["imbalance_factor"], cell["method"], cell["seed"])] = json.loads(path.read_text())["test"]
    return results


def paired_table(results: dict, pairs: list[tuple[str, str]], metrics=DEFAULT_METRICS, wins_on: str = "overall",
                 paper: dict | None = None) -> str:
    paper = paper or {}
    columns = [METRICS[name] for name in metrics]
    win_key = METRICS[wins_on][0]
    factors = sorted({key[0] for key in results}, key=lambda f: (f is None, f))
    seeds = sorted({key[2] for key in results})
    header = "| method vs base | IF | " + " | ".join(f"Δ {title}" for _, title, _ in columns) + f" | wins ({wins_on}) |"
    rule = "|---|---|" + "---|" * len(columns) + "---|"
    if paper:
        header += " paper Δ |"
        rule += "---|"
    lines = [header, rule]
    for factor in factors:
        for method, base in pairs:
            paired = [s for s in seeds if (factor, method, s) in results and (factor, base, s) in results]
            if not paired:
                continue
            cells = []
            for key, _, scale in columns:
                differences = [scale * (results[(factor, method, s)][key] - results[(factor, base, s)][key])
                               for s in paired]
                digits = 2 if scale == 100 else 3
                # one paired seed has no spread: its difference alone, never "± 0.00"
                spread = (f" ± {statistics.stdev(differences):.{digits}f}" if len(differences) > 1 else "")
                cells.append(f"{statistics.mean(differences):+.{digits}f}{spread}")
            wins = sum(results[(factor, method, s)][win_key] > results[(factor, base, s)][win_key] for s in paired)
            label = "-" if factor is None else f"{factor:g}"
            line = f"| {method} vs {base} | {label} | " + " | ".join(cells) + f" | {wins}/{len(paired)} |"
            if paper:
                line += f" {paper.get((method, base), '')} |"
            lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="a `longtail compare --output` directory")
    parser.add_argument("pairs", nargs="+", help="METHOD:BASE pairs, e.g. ccar_bs:bs")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                        help=f"comma-separated columns, of {', '.join(METRICS)} (default %(default)s)")
    parser.add_argument("--wins-on", default="overall", choices=sorted(METRICS),
                        help="the metric a seed counts as a win on (default %(default)s)")
    parser.add_argument("--paper", action="append", default=[], metavar="METHOD:BASE=DELTA",
                        help="the paper's delta for a pair, shown in a last column (repeatable; any text)")
    args = parser.parse_args()
    metrics = [name.strip() for name in args.metrics.split(",") if name.strip()]
    unknown = [name for name in metrics if name not in METRICS]
    if unknown:
        parser.error(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    paper = {}
    for entry in args.paper:
        pair, separator, delta = entry.rpartition("=")
        if not separator or ":" not in pair:
            parser.error(f"--paper takes METHOD:BASE=DELTA, got {entry!r}")
        paper[tuple(pair.split(":"))] = delta  # split against the grid's methods below
    results = load(args.output)
    methods = {key[1] for key in results}
    pairs = [split_pair(pair, methods, parser) for pair in args.pairs]
    for entry in list(paper):  # the same splitting for --paper's pairs
        paper[split_pair(":".join(entry), methods, parser)] = paper.pop(entry)
    print(paired_table(results, pairs, metrics, args.wins_on, paper))


def split_pair(text: str, methods: set, parser) -> tuple[str, str]:
    """METHOD:BASE, where either may itself hold colons (``bs:data.autoaugment=true``): the split
    whose two sides are both methods with finished cells in the grid."""
    parts = text.split(":")
    splits = [(":".join(parts[:i]), ":".join(parts[i:])) for i in range(1, len(parts))]
    found = [pair for pair in splits if pair[0] in methods and pair[1] in methods]
    if len(found) != 1:
        parser.error(f"{text!r}: no METHOD:BASE split names two methods with finished cells"
                     if not found else f"{text!r} splits into methods more than one way: {found}")
    return found[0]


if __name__ == "__main__":
    main()
