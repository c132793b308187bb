"""Training curves of a compare grid from its cells' history.jsonl: test metric per evaluated epoch
(the runs need ``train.eval_every``), mean over seeds per method with the min-max band, and, for
CCAR cells, Omega's mean per Many / Medium / Few group and the share of samples below the pivot.

    python tools/curves.py GRID_OUTPUT --output curves.png [--metric balanced_accuracy]
        [--ccar-output ccar.png] [--ccar-table ccar.md] [--car-table car.md] [--table curves.md]
        [--episodes-table episodes.md [--episode-ratio 10]]

GRID_OUTPUT is a ``longtail compare --output`` directory (its ``cells/<method>-seed<k>/``). A method's
curve is the mean over its finished seeds; a seed still training is drawn as its own dashed line, as
far as it got, and the tables leave it out once another seed of its method has finished (a mean
over the epochs every seed reached would otherwise cut the finished curve short). ``--table``
writes the metric at every 25th evaluated epoch per method as a Markdown table: when and whether
the methods cross. ``--ccar-table`` writes, per CCAR method and class group, at the first epoch, every
25th and the last: mean Omega (with its spread within the group), the share of samples with
p_t < omega, the mean p_t, and the effective learning rate, lr x the mean weight CCAR applies (each
sample's gradient is scaled by its weight, so this is the step size the group's samples train with).
``--car-table`` writes, per CAR method at the same epochs: the training loss, the base loss, CAR's
term alpha x R (R the spectral norm of the weighted EMA confusion; epoch means, as the history
records them), its share of the training loss, and R at the epoch's last step: how much CAR still
acts once the training set is fit. ``--episodes-table`` lists, per cell, each episode in which the
training lost its fit: an episode starts at an epoch whose training loss is at least ``--episode-ratio``
(default 10) times the lowest loss of the 5 epochs before it, and lasts until the loss falls back
below that ratio times that same lowest loss (or to the last epoch: not recovered). Each row gives the
loss before, the peak, the test metric last evaluated before the episode and the lowest one evaluated
from its start to 5 epochs after its end: how often and how deeply each method loses its fit. (The
training loss is the method's own: CCAR's is weighted by Omega, up to about 2x at p_t = 0, so compare
the test metric across methods, the loss within one.)
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

CELL = re.compile(r"^(?P<method>.+)-seed(?P<seed>\d+)$")


def read_cells(grid: Path) -> dict:
    """{method: {seed: [history records]}} for every cell directory with a history."""
    out = defaultdict(dict)
    for cell in sorted((grid / "cells").iterdir()):
        match = CELL.match(cell.name)
        history = cell / "history.jsonl"
        if not (cell.is_dir() and match and history.is_file()):
            continue
        records = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
        metrics = cell / "metrics.json"
        if metrics.is_file():  # the final epoch's test evaluation is in metrics.json, not in the history
            final = json.loads(metrics.read_text())
            records.append({"epoch": final["epochs"] - 1, "test": final["test"], "finished": True})
        out[match["method"]][int(match["seed"])] = records
    return dict(out)


def split_finished(seeds: dict) -> tuple:
    """({seed: records} of the finished cells, {seed: records} of those still training)."""
    finished = {seed: records for seed, records in seeds.items() if any(r.get("finished") for r in records)}
    return finished, {seed: records for seed, records in seeds.items() if seed not in finished}


def n_seeds(n: int) -> str:
    return f"{n} seed{'s' * (n > 1)}"


def summarised(seeds: dict) -> tuple:
    """The seeds a method's tables average over: its finished ones, or, while none has finished, those
    still training (a seed that has finished and one at epoch 5 would otherwise be averaged where
    both reached, which hides the finished curve); and a label that says which."""
    finished, training = split_finished(seeds)
    chosen = finished or training
    label = n_seeds(len(chosen)) + ("" if finished else ", still training")
    if finished and training:
        label += f"; {len(training)} more still training, not included"
    return chosen, label


def series(records: list, key) -> dict:
    """{epoch (1-based): value} of every record holding ``key`` (a callable picks nested values)."""
    out = {}
    for record in records:
        value = key(record)
        if value is not None:
            out[record["epoch"] + 1] = value
    return out


def mean_band(per_seed: list) -> tuple:
    """Epochs every seed reached, and the mean / min / max over the seeds there."""
    epochs = sorted(set.intersection(*(set(s) for s in per_seed))) if per_seed else []
    values = [[s[e] for s in per_seed] for e in epochs]
    return (epochs, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values])


GROUPS = ("all", "many", "medium", "few")


def shown_epochs(epochs) -> list:
    """The epochs a statistics table shows: the first, every 25th, the last."""
    epochs = sorted(epochs)
    return [e for e in epochs if e == epochs[0] or e % 25 == 0 or e == epochs[-1]]


def car_table(method_seeds: dict) -> list:
    """Rows (epoch, training loss, base loss, alpha x R, its share of the training loss, R) of one CAR
    method, each value the mean over the seeds that recorded that epoch (the share is the mean of
    the per-seed shares); epochs as :func:`shown_epochs`."""
    per_epoch = defaultdict(list)
    for records in method_seeds.values():
        for record in records:
            if "regularizer" in record and "spectral_norm" in record:
                per_epoch[record["epoch"] + 1].append(record)
    rows = []
    for epoch in shown_epochs(per_epoch):
        records = per_epoch[epoch]
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        rows.append((epoch, mean([r["loss"] for r in records]), mean([r["base_loss"] for r in records]),
                     mean([r["regularizer"] for r in records]),
                     mean([r["regularizer"] / r["loss"] for r in records]),
                     mean([r["spectral_norm"] for r in records])))
    return rows


def ccar_table(method_seeds: dict) -> list:
    """Rows (epoch, group, mean Omega, Omega std, share below pivot, mean p_t, effective lr) of one CCAR
    method, each value the mean over the seeds that recorded that epoch; epochs: the first, every 25th,
    the last."""
    per_epoch = defaultdict(list)
    for records in method_seeds.values():
        for record in records:
            if "ccar_omega_mean_all" in record:
                per_epoch[record["epoch"] + 1].append(record)
    rows = []
    for epoch in shown_epochs(per_epoch):
        for group in GROUPS:
            records = [r for r in per_epoch[epoch] if f"ccar_omega_mean_{group}" in r]
            if not records:  # no class in this group
                continue
            mean = lambda key: sum(r[key] for r in records) / len(records)  # noqa: E731
            rows.append((epoch, group, mean(f"ccar_omega_mean_{group}"), mean(f"ccar_omega_std_{group}"),
                         mean(f"ccar_below_pivot_{group}"), mean(f"ccar_p_true_mean_{group}"),
                         sum(r["lr"] * r[f"ccar_weight_mean_{group}"] for r in records) / len(records)))
    return rows


EPISODE_WINDOW = 5  # epochs before an episode whose lowest loss is its reference


def episodes(records: list, ratio: float) -> list:
    """Episodes in which one run lost its fit, as (first epoch, last epoch or None when the run had not
    recovered by its last recorded epoch, loss before, peak loss, epoch of the peak, lr at the start);
    epochs 1-based, as the tables. See the module docstring for the rule."""
    losses = [(r["epoch"] + 1, r["loss"], r.get("lr")) for r in records if "loss" in r]
    found, index = [], EPISODE_WINDOW
    while index < len(losses):
        epoch, loss, lr = losses[index]
        before = min(value for _, value, _ in losses[index - EPISODE_WINDOW:index])
        if loss < ratio * before:
            index += 1
            continue
        end = index
        while end + 1 < len(losses) and losses[end + 1][1] >= ratio * before:
            end += 1
        peak_epoch, peak, _ = max(losses[index:end + 1], key=lambda item: item[1])
        last = losses[end][0] if end + 1 < len(losses) else None
        found.append((epoch, last, before, peak, peak_epoch, lr))
        index = end + 1
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", type=Path)
    parser.add_argument("--output", type=Path, required=True, help="figure of the test metric per epoch (.png)")
    parser.add_argument("--metric", default="balanced_accuracy", help="key of the test summary (default balanced_accuracy)")
    parser.add_argument("--ccar-output", type=Path, help="figure of CCAR's Omega statistics per epoch (.png)")
    parser.add_argument("--ccar-table", type=Path, help="Markdown table of CCAR's statistics and effective lr per group")
    parser.add_argument("--car-table", type=Path, help="Markdown table of CAR's term and its share of the loss")
    parser.add_argument("--table", type=Path, help="Markdown table of the metric every 25 evaluated epochs")
    parser.add_argument("--episodes-table", type=Path, help="Markdown table of the episodes in which a run lost its fit")
    parser.add_argument("--episode-ratio", type=float, default=10.0,
                        help="an episode: training loss at least this many times its lowest of the 5 epochs before (default 10)")
    args = parser.parse_args()
    if args.episode_ratio <= 1:
        parser.error(f"--episode-ratio must be above 1 (a loss {args.episode_ratio} times its earlier low is no loss of fit)")
    cells = read_cells(args.grid)
    if not cells:
        raise SystemExit(f"{args.grid}: no cells/<method>-seed<k>/history.jsonl found")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def test_metric(record):
        return None if "test" not in record else 100 * record["test"][args.metric]

    figure, axis = plt.subplots(figsize=(9, 5))
    rows = {}
    for index, (method, seeds) in enumerate(sorted(cells.items())):
        finished, training = split_finished(seeds)
        per_seed = [s for s in (series(records, test_metric) for records in finished.values()) if s]
        if per_seed:  # the finished seeds: their mean, and the band between the lowest and highest
            epochs, mean, low, high = mean_band(per_seed)
            label = n_seeds(len(per_seed))
            axis.plot(epochs, mean, color=f"C{index}", label=f"{method} ({label})")
            axis.fill_between(epochs, low, high, color=f"C{index}", alpha=0.2)
            rows[f"{method} ({label})"] = dict(zip(epochs, mean))
        running = {}
        for seed, records in sorted(training.items()):  # each seed still training: its own dashed line
            values = series(records, test_metric)
            if values:
                axis.plot(list(values), list(values.values()), color=f"C{index}", linestyle="--", linewidth=1,
                          label=f"{method} seed {seed} (still training)")
                running[seed] = values
        if running and not per_seed:  # the table: the seeds still training where none has finished
            epochs, mean, _, _ = mean_band(list(running.values()))
            rows[f"{method} ({n_seeds(len(running))}, still training)"] = dict(zip(epochs, mean))
    axis.set_xlabel("epoch")
    axis.set_ylabel(f"test {args.metric.replace('_', ' ')} (%)")
    axis.set_title(f"{args.grid.name}: mean over seeds, band = min..max")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(args.output, dpi=120)
    plt.close(figure)
    print(f"written: {args.output}")

    if args.table and rows:
        every = sorted(set().union(*(set(r) for r in rows.values())))
        shown = [e for e in every if e % 25 == 0 or e == every[-1]]
        lines = ["| method | " + " | ".join(f"epoch {e}" for e in shown) + " |", "|---" * (len(shown) + 1) + "|"]
        for method, values in rows.items():
            lines.append(f"| {method} | " + " | ".join(f"{values[e]:.2f}" if e in values else "-" for e in shown) + " |")
        args.table.write_text("\n".join(lines) + "\n")
        print(f"written: {args.table}")

    if args.ccar_output:
        ccar = {m: s for m, s in cells.items() if any("ccar_omega_mean_all" in r for records in s.values() for r in records)}
        if not ccar:
            raise SystemExit("no cell recorded CCAR statistics (ccar_omega_mean_all in history.jsonl)")
        figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        styles = {"all": "-", "many": "--", "medium": "-.", "few": ":"}
        for index, (method, seeds) in enumerate(sorted(ccar.items())):
            seeds, _ = summarised(seeds)
            for group, style in styles.items():
                for axis, key in ((left, f"ccar_omega_mean_{group}"), (right, f"ccar_below_pivot_{group}")):
                    per_seed = [series(records, lambda r, k=key: r.get(k)) for records in seeds.values()]
                    epochs, mean, _, _ = mean_band([s for s in per_seed if s])
                    if not epochs:  # no class in this group (e.g. no class under 20 images)
                        continue
                    axis.plot(epochs, mean, linestyle=style, color=f"C{index}", label=f"{method}, {group}")
        left.axhline(1.0, color="grey", linewidth=0.8)
        left.set_ylabel("mean Omega (the CCAR weight before normalisation)")
        right.set_ylabel("share of samples with p_t < omega")
        for axis in (left, right):
            axis.set_xlabel("epoch")
            axis.grid(alpha=0.3)
        right.legend(fontsize="small", ncol=2)
        figure.tight_layout()
        figure.savefig(args.ccar_output, dpi=120)
        plt.close(figure)
        print(f"written: {args.ccar_output}")

    if args.ccar_table:
        write_statistics_table(
            args.ccar_table, cells, ccar_table,
            ("epoch", "group", "mean Omega", "Omega std", "p_t < omega", "mean p_t", "effective lr"),
            lambda e, g, o, sd, b, p, lr: (e, g, f"{o:.3f}", f"{sd:.3f}", f"{100 * b:.1f} %", f"{p:.3f}", f"{lr:.4g}"),
            "no cell recorded CCAR statistics (ccar_omega_mean_all in history.jsonl)")

    if args.car_table:
        write_statistics_table(
            args.car_table, cells, car_table,
            ("epoch", "training loss", "base loss", "alpha x R", "share of the loss", "R (last step)"),
            lambda e, loss, base, term, share, norm: (e, f"{loss:.4g}", f"{base:.4g}", f"{term:.3g}",
                                                      f"{100 * share:.2f} %", f"{norm:.3g}"),
            "no cell recorded CAR statistics (regularizer and spectral_norm in history.jsonl)")

    if args.episodes_table:
        write_episodes_table(args.episodes_table, cells, args.episode_ratio, test_metric, args.metric)


def write_episodes_table(path: Path, cells: dict, ratio: float, test_metric, metric: str) -> None:
    """Every cell's episodes (:func:`episodes`), one row each, and one row saying "none" for a cell
    without any, so a method's calm runs count as much as its unstable ones."""
    header = ("method", "seed", "epochs", "lr", "loss before", "peak loss (epoch)",
              f"test {metric.replace('_', ' ')} before", "lowest during / 5 after")
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for method, seeds in sorted(cells.items()):
        for seed, records in sorted(seeds.items()):
            state = "" if any(r.get("finished") for r in records) else " (still training)"
            tested = series(records, test_metric)
            found = episodes(records, ratio)
            if not found:
                lines.append(f"| {method} | {seed}{state} | none | | | | | |")
            for first, last, before, peak, peak_epoch, lr in found:
                prior = max((e for e in tested if e < first), default=None)
                stop = (last if last is not None else max(tested, default=first)) + EPISODE_WINDOW
                during = [tested[e] for e in tested if first <= e <= stop]
                row = (method, f"{seed}{state}", f"{first}-{last}" if last is not None else f"{first}- (not recovered)",
                       "-" if lr is None else f"{lr:g}", f"{before:.4g}", f"{peak:.4g} ({peak_epoch})",
                       "-" if prior is None else f"{tested[prior]:.2f}", f"{min(during):.2f}" if during else "-")
                lines.append("| " + " | ".join(row) + " |")
    path.write_text("\n".join(lines) + "\n")
    print(f"written: {path}")


def write_statistics_table(path: Path, cells: dict, table, header: tuple, format_row, missing: str) -> None:
    """One Markdown table per method that ``table`` gives rows for (over :func:`summarised` seeds);
    exit with ``missing`` (and write nothing) when no method has any."""
    lines = []
    for method, seeds in sorted(cells.items()):
        chosen, label = summarised(seeds)
        rows = table(chosen)
        if not rows:
            continue
        lines += [f"**{method}** ({label})", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        lines += ["| " + " | ".join(str(cell) for cell in format_row(*row)) + " |" for row in rows]
        lines.append("")
    if not lines:
        raise SystemExit(missing)
    path.write_text("\n".join(lines))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
