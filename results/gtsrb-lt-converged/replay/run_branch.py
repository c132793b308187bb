"""Issue 19 item 6 diagnostic (evidence only): ``longtail train --resume NAME`` with the gradient norm of
every step written to NAME/grad_norms.txt (one line per optimizer step, the total norm before clipping,
as torch.nn.utils.clip_grad_norm_ returns it). The trainer calls clip_grad_norm_ only when
optim.clip_grad_norm is set, so a branch made with a huge optim.clip_grad_norm (1e9) records the norms
without changing a bit of the run: the clip coefficient is clamped to 1.0, and x 1.0 is exact.

    python run_branch.py NAME      # NAME made by make_branch.py, with optim.clip_grad_norm set
"""
import runpy
import sys
from pathlib import Path

import torch.nn.utils

name = sys.argv[1]
record = open(Path(name) / "grad_norms.txt", "a", encoding="utf-8")
unclipped = torch.nn.utils.clip_grad_norm_


def recording_clip_grad_norm_(parameters, max_norm, *args, **kwargs):
    norm = unclipped(parameters, max_norm, *args, **kwargs)
    record.write(f"{float(norm)!r}\n")
    record.flush()
    return norm


torch.nn.utils.clip_grad_norm_ = recording_clip_grad_norm_
sys.argv = ["longtail", "train", "--resume", name]
runpy.run_module("longtail", run_name="__main__", alter_sys=True)
