"""Run plots: per-class accuracy against training count, confusion matrix, reliability diagram."""

from __future__ import annotations

from pathlib import Path

MAX_CONFUSION_CLASSES = 200  # beyond this an image of the matrix is unreadable


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


MAX_NAMED_CLASSES = 30  # class names on axes / points up to this many classes


def write_run_plots(run_dir: Path, results: dict, class_counts, confusion=None, dataset: str = "") -> None:
    """Plots of one run, titled with its dataset (``dataset``) and, up to MAX_NAMED_CLASSES
    classes, with the class names of ``results["classes"]``."""
    plt = _pyplot()
    plots = Path(run_dir) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    test = results["test"]
    classes = results.get("classes") or [str(j) for j in range(len(class_counts))]
    named = len(classes) <= MAX_NAMED_CLASSES
    # The recipe label is left out: for the user's own data it is the default recipe's name.
    title = dataset or results.get("label", "")

    figure, axis = plt.subplots(figsize=(6, 4))
    for split, marker in (("test", "o"), ("train", "x")):
        if split in results:
            accuracy = results[split]["per_class_accuracy"]
            points = [(n, 100 * a, name) for n, a, name in zip(class_counts, accuracy, classes) if a is not None]
            axis.scatter([p[0] for p in points], [p[1] for p in points], marker=marker, label=split, s=18)
            if named and split == "test":
                for n, a, name in points:
                    axis.annotate(name, (n, a), fontsize=6, xytext=(3, 3), textcoords="offset points")
    axis.set_xscale("log")
    axis.set_xlabel("training images of the class (log scale)")
    axis.set_ylabel("per-class accuracy (%)")
    axis.set_title(f"{title}: per-class accuracy", fontsize=9)
    axis.legend()
    figure.tight_layout()
    figure.savefig(plots / "per_class_accuracy.png", dpi=120)
    plt.close(figure)

    reliability = test["reliability"]
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    edges = reliability["bin_edges"]
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    accuracy = [a if a is not None else 0.0 for a in reliability["bin_accuracy"]]
    axis.bar(centers, accuracy, width=edges[1] - edges[0], edgecolor="black", alpha=0.7, label="accuracy")
    axis.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    axis.set_xlabel("confidence")
    axis.set_ylabel("accuracy")
    axis.set_title(f"{dataset} test reliability (ECE {100 * test['ece']:.2f}%)", fontsize=9)
    axis.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(plots / "reliability.png", dpi=120)
    plt.close(figure)

    if confusion is not None and confusion.shape[0] <= MAX_CONFUSION_CLASSES:
        # Rows and columns ordered by training count, head first (stable: ties keep label order).
        order = sorted(range(len(class_counts)), key=lambda j: -class_counts[j])
        confusion = confusion[order][:, order]
        row_sums = confusion.sum(axis=1, keepdims=True)
        normalised = confusion / row_sums.clip(min=1)
        figure, axis = plt.subplots(figsize=(6.5, 5.5) if named else (6, 5))
        image = axis.imshow(normalised, cmap="viridis", vmin=0, vmax=1)
        if named:
            names = [classes[j] for j in order]
            axis.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
            axis.set_yticks(range(len(names)), names, fontsize=6)
        axis.set_xlabel("predicted class")
        axis.set_ylabel("true class (most training images first)")
        axis.set_title(f"{dataset} test confusion (rows normalised)", fontsize=9)
        figure.colorbar(image)
        figure.tight_layout()
        figure.savefig(plots / "confusion.png", dpi=120)
        plt.close(figure)


def write_comparison_plots(output: Path, rows: list, class_counts) -> None:
    """Per-class accuracy against class size (one line per method) and overall vs worst-class bars."""
    plt = _pyplot()
    for factor in dict.fromkeys(r["imbalance_factor"] for r in rows):
        group = [r for r in rows if r["imbalance_factor"] == factor]
        suffix = "" if factor is None else f"_if{factor:g}"
        order = sorted(range(len(class_counts)), key=lambda j: -class_counts[j])
        labels = [_wrap_method(r["method"]) for r in group]
        long_labels = any("\n" in label for label in labels)  # override chains: a legend beside the axes
        figure, axis = plt.subplots(figsize=(11, 5) if long_labels else (8, 5))
        # tab20 + cycling markers: a dozen methods stay distinguishable (the default cycle repeats at 10).
        colors = plt.get_cmap("tab20").colors
        markers = "os^vD<>p*hX"
        for index, row in enumerate(group):
            accuracy = row["per_class_accuracy"]
            axis.plot([class_counts[j] for j in order], [100 * (accuracy[j] or 0.0) for j in order],
                      marker=markers[index % len(markers)], markersize=4, linewidth=1.2,
                      color=colors[index % len(colors)], label=labels[index])
        axis.set_xscale("log")
        axis.invert_xaxis()
        axis.set_xlabel("training images of the class (log scale; head on the left)")
        axis.set_ylabel("per-class test accuracy (%, mean over seeds)")
        if long_labels:
            axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        else:
            axis.legend(fontsize=7, ncol=2)
        figure.tight_layout()
        figure.savefig(Path(output) / f"per_class_accuracy{suffix}.png", dpi=120)
        plt.close(figure)

        # Horizontal bars: method specs with overrides (bs:model.finetune=lora:data.image_size=64:...)
        # are too long for rotated x labels; wrapped at their colons they fit beside the bars.
        lines = sum(label.count("\n") + 1 for label in labels)
        figure, axis = plt.subplots(figsize=(8, max(3.0, 0.25 * lines + 0.35 * len(group) + 1.0)))
        positions = range(len(group))
        overall = [100 * (r["accuracy"]["mean"] or 0) for r in group]
        worst = [100 * (r["worst_class_accuracy"]["mean"] or 0) for r in group]
        axis.barh([p - 0.2 for p in positions], overall, height=0.4, label="overall",
                  xerr=[100 * (r["accuracy"]["std"] or 0) for r in group])
        axis.barh([p + 0.2 for p in positions], worst, height=0.4, label="worst class",
                  xerr=[100 * (r["worst_class_accuracy"]["std"] or 0) for r in group])
        axis.set_yticks(list(positions))
        axis.set_yticklabels(labels, fontsize=8)
        axis.invert_yaxis()  # the first method on top, as in the tables
        axis.set_xlabel("test accuracy (%)")
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(Path(output) / f"overall_vs_worst{suffix}.png", dpi=120)
        plt.close(figure)


def _wrap_method(method: str, width: int = 40) -> str:
    """A method spec broken into lines of at most ``width`` characters at its colons."""
    lines = [""]
    for part in method.split(":"):
        piece = part if not lines[-1] else ":" + part
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append(":" + part)
        else:
            lines[-1] += piece
    return "\n".join(lines)


def shifted_prior_plot(report: dict) -> bytes:
    """PNG of ``longtail eval --test-priors``: accuracy against the test prior (SADE's order, forward
    on the left), without adaptation (exact expectation, and the draws' mean ± std), with the oracle
    prior, and with the EM-estimated prior. Returned as bytes, for the caller's atomic write."""
    import io

    plt = _pyplot()
    sets = report["sets"]
    names = [entry["name"] for entry in sets]
    positions = list(range(len(sets)))

    def percent(values):
        return [None if v is None else 100 * v for v in values]

    figure, axis = plt.subplots(figsize=(max(6, 0.6 * len(sets)), 4.5))
    axis.plot(positions, percent([e["none"]["expected"]["accuracy"] for e in sets]), marker="o",
              label="no adaptation (exact expectation)")
    for column, label, marker in (("none", "no adaptation (draws)", "."), ("oracle", "oracle prior (draws)", "s"),
                                  ("em", "EM-estimated prior (draws)", "^")):
        spreads = [e[column]["drawn"]["accuracy"] for e in sets]
        axis.errorbar(positions, percent([s["mean"] for s in spreads]),
                      yerr=[100 * (s["std"] or 0.0) for s in spreads], marker=marker, capsize=3,
                      linestyle="--" if column == "none" else "-", label=label)
    axis.plot(positions, percent([e["none"]["expected"]["worst_class_accuracy"] for e in sets]), color="grey",
              linestyle=":", label="worst class, no adaptation")
    axis.set_xticks(positions)
    axis.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    axis.set_ylabel(f"{report.get('split', 'test')} accuracy (%)")
    axis.set_title(f"accuracy vs test prior ({report['draws']} draws per prior)", fontsize=10)
    axis.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()
