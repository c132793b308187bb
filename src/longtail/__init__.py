"""longtail: long-tailed image recognition in PyTorch.

Layer 1 (usable in any training loop): ``longtail.losses``, ``longtail.regularizers``,
``longtail.data``, ``longtail.models``, ``longtail.metrics``.
Layer 2 (built on layer 1, never imported by it): ``longtail.engine``, ``longtail.cli``,
``longtail.report``.

``import longtail`` is cheap: the subpackages (and :func:`load_run`) are imported on first use,
so ``longtail.losses.CCAR`` works after a bare ``import longtail`` without importing torch at
that moment.
"""

from __future__ import annotations

import importlib

from longtail._version import __version__

_SUBPACKAGES = ("losses", "regularizers", "data", "models", "metrics", "engine", "report", "cli")
__all__ = [*_SUBPACKAGES, "load_run", "__version__"]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module  # later lookups bypass this function
        return module
    if name == "load_run":
        from longtail.engine.evaluation.inference import load_run

        globals()["load_run"] = load_run
        return load_run
    raise AttributeError(f"module 'longtail' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
