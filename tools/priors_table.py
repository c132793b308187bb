"""RESULTS.md tables of `longtail eval RUN --test-priors` for several runs (one column per run):
accuracy against the test prior without adaptation, with the oracle prior and with the EM-estimated
prior, and how close EM's estimate comes to the true prior.

    python tools/priors_table.py runs/ce runs/bs runs/ccar_bs runs/car_bs [--plot curves.png]

Reads RUN/test_priors.json (written by `longtail eval RUN --test-priors`); the column name is the
run directory's name. `--plot` also draws every run's curve of accuracy against the test prior in
one figure: without adaptation (left) and with the EM-estimated prior, the oracle prior dotted (right).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def with_std(spread: dict) -> str:
    if spread["mean"] is None:
        return "-"
    return percent(spread["mean"]) + ("" if spread["std"] is None else f" ± {100 * spread['std']:.2f}")


def table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def plot_curves(reports: dict, names: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = range(len(names))
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for index, (method, report) in enumerate(reports.items()):
        colour = f"C{index}"

        def curve(kind):
            return [100 * entry[kind]["drawn"]["accuracy"]["mean"] for entry in report["sets"]]

        left.plot(positions, curve("none"), marker="o", color=colour, label=method)
        right.plot(positions, curve("em"), marker="o", color=colour, label=f"{method}, EM prior")
        right.plot(positions, curve("oracle"), linestyle=":", color=colour, label=f"{method}, oracle prior")
    for axis, title in ((left, "no adaptation"), (right, "adapted: EM-estimated prior (solid), oracle (dotted)")):
        axis.set_xticks(list(positions))
        axis.set_xticklabels(names, rotation=60, ha="right")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    left.set_ylabel("test accuracy (%), mean over the draws")
    left.legend()
    right.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories holding test_priors.json")
    parser.add_argument("--plot", type=Path, help="also write one figure of every run's curves here (.png)")
    args = parser.parse_args()
    reports = {run.name: json.loads((run / "test_priors.json").read_text()) for run in args.runs}
    names = [entry["name"] for entry in next(iter(reports.values()))["sets"]]
    for name, report in reports.items():
        if [entry["name"] for entry in report["sets"]] != names:
            raise SystemExit(f"{name}: its test priors differ from the first run's; use the same --rhos")
    methods = list(reports)
    if args.plot:
        plot_curves(reports, names, args.plot)

    def cell(method, index):
        return reports[method]["sets"][index]

    print("Accuracy (%) without adaptation: exact expectation sum_c pi_c acc_c (mean ± std over the draws)\n")
    print(table(["test prior", "images"] + methods,
                [[n, cell(methods[0], i)["images"]]
                 + [f"{percent(cell(m, i)['none']['expected']['accuracy'])} "
                    f"({with_std(cell(m, i)['none']['drawn']['accuracy'])})" for m in methods]
                 for i, n in enumerate(names)]))
    print("\nAccuracy (%): no adaptation / oracle prior / EM-estimated prior (means over the draws)\n")
    print(table(["test prior"] + methods,
                [[n] + [" / ".join(percent(cell(m, i)[c]["drawn"]["accuracy"]["mean"]) for c in ("none", "oracle", "em"))
                        for m in methods] for i, n in enumerate(names)]))
    print("\nWorst-class accuracy (%), expectation: no adaptation / oracle prior\n")
    print(table(["test prior"] + methods,
                [[n] + [" / ".join(percent(cell(m, i)[c]["expected"]["worst_class_accuracy"]) for c in ("none", "oracle"))
                        for m in methods] for i, n in enumerate(names)]))
    print("\nEM's estimated prior: total-variation distance to the true prior (mean over the draws; 0 = exact)\n")
    print(table(["test prior"] + methods,
                [[n] + [f"{cell(m, i)['em']['total_variation_to_true_prior']['mean']:.3f}" for m in methods]
                 for i, n in enumerate(names)]))
    first = next(iter(reports.values()))
    print(f"\n{first['draws']} draws per prior (seed {first['seed']} + d), n_max = {first['n_max']}; "
          + "; ".join(f"{m}: encoded prior {reports[m]['encoded_prior_source']}" for m in methods))


if __name__ == "__main__":
    main()
