"""ConCutMix's contrastive keys under a real process group (2 CPU processes, gloo, DDP).

With global keys (the default) the BalSCL loss and the parameter update of BCL + CAR on 2
processes equal one process on the concatenated batch; with per-rank keys the loss is the mean of
the per-rank losses. The model runs in eval mode, so batch norm uses fixed statistics.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from conftest import free_port
import torch.distributed as dist
import torch.multiprocessing as mp

from longtail.data.loading.pair_loader import PairBatch
from longtail.engine.methods.contrastive import ConCutMixObjective, ConCutMixSettings
from longtail.engine.runtime.distributed import exit_worker
from longtail.models import BCLModel, create_model
from longtail.regularizers import CAR

WORLD_SIZE = 2
PER_RANK = 6
COUNTS = [40, 20, 9, 4]


def make_model():
    torch.manual_seed(0)
    model = BCLModel(create_model("small_cnn", len(COUNTS), in_channels=3, head="cosine", width=8), feat_dim=8)
    return model.eval()


def make_batch(rank=None):
    generator = torch.Generator().manual_seed(1)
    total = PER_RANK * WORLD_SIZE
    views = [torch.randn(total, 3, 28, 28, generator=generator) for _ in range(3)]
    labels = torch.tensor([0, 0, 1, 2, 0, 3, 1, 0, 0, 2, 1, 0])
    part = slice(None) if rank is None else slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    return PairBatch(views[0][part], (views[1][part], views[2][part]), None, labels[part]), labels[part]


def one_step(model, keys, rank=None):
    objective = ConCutMixObjective(ConCutMixSettings(cutmix_prob=0.0, keys=keys, tau=0.5), COUNTS, seed=0)
    car = CAR(COUNTS, exact_below=0, power_iters=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    batch, labels = make_batch(rank)
    terms = objective.training_step(model, batch, labels, 0, 0, contextlib.nullcontext, car, lambda t: None)
    sum(terms.values()).backward()
    optimizer.step()
    module = getattr(model, "module", model)
    return {"contrastive": terms["contrastive"].detach(),
            "parameters": {k: v.detach().clone() for k, v in module.state_dict().items()}}


def worker(rank, port, output_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        results = {}
        for keys in ("global", "local"):
            model = torch.nn.parallel.DistributedDataParallel(make_model())
            results[keys] = one_step(model, keys, rank)
        torch.save(results, os.path.join(output_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
    exit_worker(0)



@pytest.fixture(scope="module")
def distributed(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("concutmix_ddp"))
    mp.spawn(worker, args=(free_port(), output_dir), nprocs=WORLD_SIZE, join=True)
    return [torch.load(os.path.join(output_dir, f"rank{r}.pt"), weights_only=True) for r in range(WORLD_SIZE)]


def test_global_keys_loss_and_update_equal_one_process_on_the_concatenated_batch(distributed):
    single = one_step(make_model(), "global")
    for rank in range(WORLD_SIZE):
        result = distributed[rank]["global"]
        torch.testing.assert_close(result["contrastive"], single["contrastive"], rtol=1e-5, atol=1e-6)
        for key, value in single["parameters"].items():
            torch.testing.assert_close(result["parameters"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    initial = make_model().state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in single["parameters"].items()
               if k.startswith("projection")), "the heads moved"


def test_per_rank_keys_average_the_per_rank_losses(distributed):
    per_rank = [one_step(make_model(), "local", rank)["contrastive"] for rank in range(WORLD_SIZE)]
    for rank in range(WORLD_SIZE):
        torch.testing.assert_close(distributed[rank]["local"]["contrastive"], per_rank[rank], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(distributed[0]["local"]["contrastive"], distributed[0]["global"]["contrastive"])
    torch.testing.assert_close(distributed[0]["local"]["parameters"]["projection.0.weight"],
                               distributed[1]["local"]["parameters"]["projection.0.weight"])
