"""The tables of results/gtsrb-lt-converged/replay/README.md, from each run's files. First, per branch,
the training loss of epochs 147-152, the test balanced accuracy at epoch 150 (the evaluated epoch), and
the largest gradient norm of epochs 147-148 where it was recorded (run_branch.py). Second, the final
test metrics of the branches trained on to epoch 200, beside the original cell's (CELL: the converged
grid's ccar_bs seed 0, which the replay reproduces to epoch 152 and which went on to 200 as run).

    python summary.py /work/evidence/gtsrb-replay /work/evidence/gtsrb-converged/cells/ccar_bs-seed0 > branches.md
"""
import json
import sys
from pathlib import Path

# (run, label, the run whose grad_norms.txt holds this branch's norms: itself, or a re-run that
# reproduced its epochs 147-148 bit for bit)
BRANCHES = (("replay", "`ccar_bs` as run (the replay)", "norms-from-146"),
            ("bs-from-146", "`bs`", "bs-norms-from-146"),
            ("batchmean-from-146", "`ccar_bs`, Omega / its batch mean", None),
            ("bs-lr0.2-from-146", "`bs` at lr 0.2", None),
            ("clip1-from-146", "`ccar_bs`, gradient norm clipped to 1.0", "clip1-from-146"),
            ("lr0.05-from-146", "`ccar_bs` at lr 0.05", "lr0.05-from-146"))
STEPS_PER_EPOCH = 77  # ceil(9,523 / 128)
root = Path(sys.argv[1])
epochs = range(147, 153)


def history(run: str) -> dict:
    return {r["epoch"] + 1: r for r in map(json.loads, (root / run / "history.jsonl").read_text().splitlines())}


print("| from the state after epoch 146 | " + " | ".join(f"loss {e}" for e in epochs)
      + " | test balanced at 150 | largest gradient norm, 147-148 |")
print("|---" * (len(epochs) + 3) + "|")
for run, label, norms_run in BRANCHES:
    if not (root / run / "history.jsonl").exists():
        continue
    losses = history(run)
    largest = "-"
    if norms_run is not None:
        if norms_run != run:  # the re-run must have reproduced this branch exactly
            again = history(norms_run)
            assert all(again[e]["loss"] == losses[e]["loss"] for e in (147, 148)), (run, norms_run)
        norms = [float(line) for line in (root / norms_run / "grad_norms.txt").read_text().split()]
        largest = f"{max(norms[:2 * STEPS_PER_EPOCH]):.3g}"
    row = " | ".join(f"{losses[e]['loss']:.4g}" for e in epochs)
    print(f"| {label} | {row} | {100 * losses[150]['test']['balanced_accuracy']:.2f} | {largest} |")

FINAL = ((Path(sys.argv[2]), "`ccar_bs` as run (the grid's cell)"), (root / "bs-from-146", "`bs`"),
         (root / "clip1-from-146", "`ccar_bs`, gradient norm clipped to 1.0"))
METRICS = (("balanced_accuracy", "balanced"), ("accuracy", "overall"), ("many_accuracy", "Many"),
           ("medium_accuracy", "Medium"), ("few_accuracy", "Few"), ("worst_class_accuracy", "worst class"),
           ("ece", "ECE"))
print()
print("| from the state after epoch 146, to epoch 200 | " + " | ".join(label for _, label in METRICS)
      + " | training loss 200 |")
print("|---" * (len(METRICS) + 2) + "|")
for run, label in FINAL:
    if not (run / "metrics.json").exists():
        continue
    test = json.loads((run / "metrics.json").read_text())["test"]
    last = json.loads((run / "history.jsonl").read_text().splitlines()[199])
    row = " | ".join(f"{100 * test[key]:.2f}" for key, _ in METRICS)
    print(f"| {label} | {row} | {last['loss']:.2g} |")
