"""Plain-text / markdown tables of evaluation results."""

from __future__ import annotations

# (key in LongTailMetrics.compute(), column title); accuracies are fractions, shown in percent.
SUMMARY_COLUMNS = (
    ("accuracy", "Overall"),
    ("many_accuracy", "Many"),
    ("medium_accuracy", "Medium"),
    ("few_accuracy", "Few"),
    ("worst_class_accuracy", "Worst"),
    ("worst_10pct_accuracy", "Worst10%"),
    ("balanced_accuracy", "Balanced"),
    ("ece", "ECE"),
)


def format_percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(results: dict) -> str:
    """One row per evaluated split (test / train / val) of a run's results, in percent."""
    header = ["split"] + [title for _, title in SUMMARY_COLUMNS]
    rows = []
    for split in ("test", "val", "train"):
        if split in results and isinstance(results[split], dict):
            rows.append([split] + [format_percent(results[split].get(key)) for key, _ in SUMMARY_COLUMNS])
    table = markdown_table(header, rows)
    extra = []
    selected = results.get("selected")
    if selected:
        extra.append(f"weights of epoch {selected['epoch'] + 1} of {results.get('epochs')}, chosen on "
                     f"{selected['metric']} = {100 * selected['value']:.2f}%")
    for split in ("test", "val"):
        scored = results.get(split) or {}
        if scored.get("worst_class_name") is not None:
            extra.append(f"worst class ({split}): {scored['worst_class_name']} "
                         f"{format_percent(scored['worst_class_accuracy'])}%")
            break
    test = results.get("test") or {}
    if test.get("confusion_spectral_norm") is not None:
        extra.append(f"weighted hard-confusion spectral norm (test): {test['confusion_spectral_norm']:.4f}")
    if results.get("worst_class_test_train_ratio") is not None:
        extra.append(f"worst-class test/train ratio: {results['worst_class_test_train_ratio']:.3f}")
    if results.get("train_images_per_s"):
        extra.append(f"training: {results['train_seconds']:.1f} s, {results['train_images_per_s']:.0f} images/s")
    return table + ("\n" + "\n".join(extra) if extra else "")


MAX_TABLE_CLASSES = 20  # beyond this the per-class table goes to metrics.json only


def per_class_table(results: dict, max_classes: int = MAX_TABLE_CLASSES) -> str:
    """Per class (after :func:`longtail.engine.evaluation.evaluate.name_classes`): name, training images, and
    accuracy / images of each evaluated split; up to ``max_classes`` classes, else the five worst."""
    rows = results.get("per_class")
    if not rows:
        return ""
    splits = [s for s in ("test", "val") if f"{s}_accuracy" in rows[0]]
    if len(rows) > max_classes:
        split = splits[0] if splits else None
        if split is None:
            return ""
        scored = [r for r in rows if r[f"{split}_accuracy"] is not None]
        worst = sorted(scored, key=lambda r: r[f"{split}_accuracy"])[:5]
        listed = ", ".join(f"{r['class']} {format_percent(r[f'{split}_accuracy'])}% ({r['train_images']} train)"
                           for r in worst)
        return f"{len(rows)} classes (per-class results in metrics.json); worst on {split}: {listed}"
    header = ["class", "train images"] + [title for s in splits for title in (f"{s} acc", f"{s} images")]
    table = [[r["class"], r["train_images"]]
             + [cell for s in splits for cell in (format_percent(r[f"{s}_accuracy"]), r[f"{s}_images"])]
             for r in rows]
    return markdown_table(header, table)
