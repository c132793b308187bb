"""Long-tailed splits (the LDAM-DRW generator: ``longtail_counts``, ``make_longtail``) and the
imbalance report of any labelled set (``analyze``). Public names: ``longtail.data``."""
