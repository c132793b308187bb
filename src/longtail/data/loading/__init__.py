"""Batches on the device: the in-memory batched loader, the per-file DataLoader pipeline (and its
GPU-decoding variant), and ConCutMix's pair loaders; all resumable mid-epoch with
``set_epoch(epoch, start_batch)``. Public names: ``longtail.data``."""
