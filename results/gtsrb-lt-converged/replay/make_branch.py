"""Issue 19 item 6 diagnostic (evidence only, not part of the library): a run directory that resumes
the replayed ccar_bs seed 0 from its state after epoch 146 (epoch146.pt: weights, SGD momentum, RNG,
compile flag) with another loss, so the branch sees the same model and the same batches as the run
that diverged at epoch 147, and differs only in its loss.

    python make_branch.py NAME LOSS [key=value ...] [section.key=value ...]
    # e.g. bs-from-146 bs; batchmean-from-146 ccar_bs weight_normalization=batch_mean; bs-lr0.2 bs optim.lr=0.2;
    #      clip1-from-146 ccar_bs optim.clip_grad_norm=1.0
A key=value is a loss option; a section.key=value sets that config key (the schedule recomputes the
lr from optim.lr every step).
"""
import shutil
import sys
from pathlib import Path

from longtail.engine.rundir.checkpoint import load_run_checkpoint, save_checkpoint
import torch
import yaml

from longtail.engine.config import config_from_dict
from longtail.engine.training.components import build_loss_fn

name, loss_name, *options = sys.argv[1:]
settings = dict(o.split("=", 1) for o in options if "." in o.split("=", 1)[0])
options = dict(o.split("=", 1) for o in options if "." not in o.split("=", 1)[0])
here = Path(__file__).resolve().parent
state = load_run_checkpoint(here / "epoch146.pt")
assert state["epoch"] == 146 and state["batch"] == 0, (state["epoch"], state["batch"])
branch = here / name
shutil.rmtree(branch, ignore_errors=True)
(branch / "checkpoints").mkdir(parents=True)
for file in ("class_counts.json", "data_fingerprint.json", "preprocessing.json", "environment.json"):
    shutil.copy(here / "replay" / file, branch / file)
state["config"]["loss"] = {"name": loss_name, "options": options}
for key, value in settings.items():
    section, field = key.split(".")
    current = state["config"][section][field]  # a key whose default is None (optim.clip_grad_norm) is read as YAML
    state["config"][section][field] = yaml.safe_load(value) if current is None else type(current)(value)
state["config"]["train"]["run_name"] = name
state["config"]["train"]["output_dir"] = str(here)
state["config"]["description"] = f"branch of ccar_bs seed 0 at epoch 146: {loss_name} {options} {settings}"
state["label"] = state["config"]["description"]
counts = state["class_counts"]
state["loss"] = build_loss_fn(config_from_dict(state["config"]), counts, torch.device("cpu")).state_dict()  # as the trainer builds it
state["history"] = state["history"][:146]
save_checkpoint(branch / "checkpoints" / "last.pt", state)
print(f"{branch}: epoch {state['epoch']}, loss {loss_name} {options} {settings}, loss state {list(state['loss'])}")
