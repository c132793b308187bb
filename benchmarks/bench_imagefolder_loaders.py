"""Data-only throughput, interleaved: one training epoch of the CIFAR-5 JPEG folder's train split
through the in-memory loader vs the per-file loader (2 workers), same augmentation (crop 4 + flip)."""
import sys, time, torch
torch.set_num_threads(1)
from longtail.engine.config import build_config
from longtail.engine.training.data_setup import build_data
from longtail.engine.runtime.distributed import DistributedContext

def loader(in_memory):
    config, _ = build_config(None, None, ["data.name=imagefolder", "data.root=/tmp/cifar5/cifar10-5class-jpeg",
                                          f"data.in_memory={in_memory}", "data.workers=2", "train.eval_train=false"])
    t = time.time(); data = build_data(config, torch.device("cpu"), DistributedContext()); setup = time.time() - t
    return data.train_loader, setup

loaders = {name: loader(flag) for name, flag in (("in-memory", "true"), ("files", "false"))}
for name, (l, setup) in loaders.items():
    print(f"{name}: setup (scan{' + decode' if name == 'in-memory' else ''} + statistics) {setup:.1f} s")
for epoch in range(2):
    for name, (l, _) in loaders.items():
        l.set_epoch(epoch); t = time.time(); n = 0
        for x, y in l: n += len(x)
        print(f"epoch {epoch} {name}: {n / (time.time() - t):.0f} images/s ({n} images)", flush=True)
