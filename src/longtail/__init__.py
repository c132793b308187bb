"""longtail: long-tailed image recognition in PyTorch.

Layer 1 (usable in any training loop): ``longtail.losses``, ``longtail.regularizers``,
``longtail.data``, ``longtail.models``, ``longtail.metrics``.
Layer 2 (built on layer 1, never imported by it): ``longtail.engine``, ``longtail.cli``,
``longtail.report``.
"""

__version__ = "0.1.0"
