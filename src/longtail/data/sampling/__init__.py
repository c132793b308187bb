"""Which samples a batch holds: class-aware samplers with exact per-epoch class quotas, split across
DDP ranks (``build_sampler``), and ConCutMix's (background, foreground) pair sampler. Public names:
``longtail.data``."""
