"""The table of results/gtsrb-lt-converged/replay/README.md: per branch, the training loss of epochs
147-152 and the test balanced accuracy at epoch 150 (the evaluated epoch), from each run's history.

    python summary.py /work/evidence/gtsrb-replay > branches.md
"""
import json
import sys
from pathlib import Path

BRANCHES = (("replay", "`ccar_bs` as run (the replay)"), ("bs-from-146", "`bs`"),
            ("batchmean-from-146", "`ccar_bs`, Omega / its batch mean"), ("bs-lr0.2-from-146", "`bs` at lr 0.2"))
root = Path(sys.argv[1])
epochs = range(147, 153)
print("| from the state after epoch 146 | " + " | ".join(f"loss {e}" for e in epochs)
      + " | test balanced at 150 |")
print("|---" * (len(epochs) + 2) + "|")
for run, label in BRANCHES:
    history = {r["epoch"] + 1: r for r in map(json.loads, (root / run / "history.jsonl").read_text().splitlines())}
    losses = " | ".join(f"{history[e]['loss']:.4g}" for e in epochs)
    print(f"| {label} | {losses} | {100 * history[150]['test']['balanced_accuracy']:.2f} |")
