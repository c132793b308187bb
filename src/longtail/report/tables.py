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
    test = results.get("test") or {}
    if test.get("confusion_spectral_norm") is not None:
        extra.append(f"weighted hard-confusion spectral norm (test): {test['confusion_spectral_norm']:.4f}")
    if results.get("worst_class_test_train_ratio") is not None:
        extra.append(f"worst-class test/train ratio: {results['worst_class_test_train_ratio']:.3f}")
    if results.get("train_images_per_s"):
        extra.append(f"training: {results['train_seconds']:.1f} s, {results['train_images_per_s']:.0f} images/s")
    return table + ("\n" + "\n".join(extra) if extra else "")
