"""Everything that changes pixels: the evaluation ``Preprocessing`` every pipeline shares, batched
(in-memory) and per-file training augmentation, ConCutMix's contrastive views, and batch mixing
(Mixup, CutMix, ConCutMix with its rectified label). Public names: ``longtail.data``."""
