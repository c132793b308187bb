"""Augmentation does not depend on the number of processes (2 CPU processes, gloo).

Each sample's augmentation is drawn from (seed, epoch, global position in the epoch's draw), so
rank r of 2 with batch B / 2 holds exactly the augmented samples at positions r, r + 2, ... of
the single-process batch B, for the in-memory loader and for the file pipeline (whose single
process here also uses DataLoader workers, which must not matter either).
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import write_image_folder, free_port
from longtail.engine.config import build_config
from longtail.engine.training.data_setup import build_data
from longtail.engine.runtime.distributed import DistributedContext, exit_worker

WORLD_SIZE = 2
EPOCH = 1
PIPELINES = {  # name -> overrides; both crop, flip and Cutout, the in-memory one also AutoAugment per image
    "in-memory": ["data.in_memory=true", "data.autoaugment=true"],
    "files": ["data.in_memory=false", "data.randaugment=true"],
}


def epoch_batches(root, context, pipeline, workers=0):
    config, _ = build_config(None, None, [
        "data.name=imagefolder", f"data.root={root}", "data.batch_size=8", "data.sampler=class_balanced",
        "data.crop_padding=3", "data.cutout=4", f"data.workers={workers}", "train.seed=5", *PIPELINES[pipeline]])
    data = build_data(config, torch.device("cpu"), context)
    data.train_loader.set_epoch(EPOCH)
    return [(images.clone(), labels.clone()) for images, labels in data.train_loader]


def worker(rank, port, root, output_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        context = DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size())
        results = {pipeline: epoch_batches(root, context, pipeline) for pipeline in PIPELINES}
        torch.save(results, os.path.join(output_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    exit_worker(0)



@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("augment-ddp")
    write_image_folder(root, [14, 6, 4], size=(10, 10), fmt="PNG", split="train")
    write_image_folder(root, [2, 2, 2], size=(10, 10), fmt="PNG", split="test")
    return root


@pytest.fixture(scope="module")
def rank_batches(image_root, tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("augment-ddp-out"))
    mp.spawn(worker, args=(free_port(), str(image_root), output_dir), nprocs=WORLD_SIZE, join=True)
    return [torch.load(os.path.join(output_dir, f"rank{rank}.pt"), weights_only=True) for rank in range(WORLD_SIZE)]


@pytest.mark.parametrize("pipeline", list(PIPELINES))
def test_two_processes_see_the_single_process_augmentations(image_root, rank_batches, pipeline):
    single = epoch_batches(image_root, DistributedContext(), pipeline, workers=2 if pipeline == "files" else 0)
    per_rank = [rank_batches[rank][pipeline] for rank in range(WORLD_SIZE)]
    assert len(single) == len(per_rank[0]) == len(per_rank[1]) == 3  # 24 draws, global batch 8
    for k, (images, labels) in enumerate(single):
        for rank in range(WORLD_SIZE):
            rank_images, rank_labels = per_rank[rank][k]
            assert torch.equal(rank_images, images[rank::WORLD_SIZE]), (pipeline, k, rank)
            assert torch.equal(rank_labels, labels[rank::WORLD_SIZE])
    # The augmentation is really random: the same image at different positions is augmented differently.
    flat = torch.cat([images for images, _ in single])
    assert len({tuple(x.flatten()[:50].tolist()) for x in flat}) == flat.shape[0]
