"""Layer 2: the training engine built on the library (docs/architecture.md).

Sub-packages, each importing only those before it in this list (``tests/test_architecture.py``):

- ``methods``: what a training method needs beyond the generic loop (heads, sampler, its own
  training step, per-epoch hooks, options it refuses); one module per method.
- ``config``: the typed run configuration, recipes and overrides, and its checks.
- ``runtime``: devices and processes (torch.distributed) and numeric precision.
- ``rundir``: the run directory: atomic writes, checkpoints, environment, data fingerprints.
- ``training``: one run: data setup, components, learning-rate schedule, the trainer.
- ``evaluation``: using a trained run: re-evaluation, post-hoc classifiers, ``load_run``, predict, export.
- ``compare``: grids of runs (methods x seeds x imbalance factors) and their tables.
"""
