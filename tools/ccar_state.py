"""What CCAR's weight would be on a finished run's training images: for each run, the training split
through its reported weights (evaluation transform), then per Many / Medium / Few group the mean p_t
(from the Balanced-Softmax-adjusted softmax, CCAR's default on a BS base, and from the raw softmax),
the share of images below the pivot and the mean Omega of each. A run trained with any loss can be
read this way: for a bs run it says what CCAR on top of it would still change at the end of training.

    python tools/ccar_state.py RUN [RUN ...] [--omega 0.75] [--output state.md]

The per-epoch view during training is in the CCAR runs' own history.jsonl (`ccar_omega_mean_<group>`,
`ccar_below_pivot_<group>`; tools/curves.py --ccar-output draws it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def group_rows(logits: torch.Tensor, labels: torch.Tensor, counts: list, omega: float) -> dict:
    from longtail.losses.ccar import ccar_weight, class_frequencies
    from longtail.metrics.confusion import shot_group_masks

    count_tensor = torch.tensor(counts, dtype=torch.float64)
    frequency = class_frequencies(counts).double()[labels]
    logits = logits.double()
    sources = {"adjusted": logits + torch.log(count_tensor / count_tensor.sum()), "raw": logits}
    masks = {"all": torch.ones(len(counts), dtype=torch.bool), **shot_group_masks(count_tensor)}
    rows = {}
    for group, mask in masks.items():
        chosen = mask[labels]
        if not bool(chosen.any()):
            continue
        row = {"images": int(chosen.sum())}
        for source, z in sources.items():
            p_true = torch.softmax(z, dim=1).gather(1, labels[:, None]).squeeze(1)[chosen]
            weight = ccar_weight(p_true, frequency[chosen], omega)
            row[source] = (float(p_true.mean()), float((p_true < omega).double().mean()), float(weight.mean()),
                           float(weight.std()) if weight.numel() > 1 else 0.0)
        rows[group] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--omega", type=float, default=0.75, help="CCAR's confidence pivot (default 0.75)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, help="also write the table here (Markdown)")
    args = parser.parse_args()

    from longtail.engine.evaluation.evaluate import load_trained
    from longtail.engine.evaluation.priors import split_logits

    lines = [f"Training images of each run through its reported weights; omega = {args.omega}. Per group: mean "
             "p_t / share with p_t < omega / mean Omega (std), with p_t from the BS-adjusted softmax "
             "(CCAR's default on a Balanced Softmax base) and from the raw softmax.", "",
             "| run | group | images | adjusted p_t | below pivot | Omega | raw p_t | below pivot | Omega |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in args.runs:
        model, data, config, device = load_trained(run, args.device, with_train_split=True)
        logits, labels = split_logits(model, data.eval_loaders["train"], device, config.train.precision)
        for group, row in group_rows(logits, labels, [int(c) for c in data.class_counts], args.omega).items():
            cells = []
            for source in ("adjusted", "raw"):
                p_true, below, mean, std = row[source]
                cells += [f"{p_true:.3f}", f"{100 * below:.1f} %", f"{mean:.3f} ({std:.3f})"]
            lines.append(f"| {run.name} | {group} | {row['images']} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
