"""``model.compile``: whether to ``torch.compile`` the training model, and where the compiled
artifacts are cached (issue 20).

``true`` / ``false`` are obeyed. ``auto`` compiles only when the time compilation saves over the
rest of the run exceeds what compiling costs. The trainer runs the first epoch eagerly, times it,
and asks :func:`compile_pays` with

    saved = remaining steps x measured seconds per step x (1 - 1 / SPEEDUP)
    cost  = COMPILE_SECONDS x (leaf modules of the model / leaf modules of ResNet-32)

Both constants are the measurements of BENCHMARKS.md (``benchmarks/bench_speed.py``, ResNet-32
at 32 px on the 2-core Zen 4 CPU): the median step speedup of a compiled model over eager (1.06)
and the *slowest* cold compile seen (261 s, under load; 74 s on a quieter machine). Conservative
on purpose: the cold cost is assumed even when the cache below is warm (11.5 s), and the cost
grows with the model's size. On this CPU it works out at about 77 minutes of remaining training
for ResNet-32 before ``auto`` compiles. GPU speedups are usually larger than 1.06x, but none was
measured here, so the same constants apply (``model.compile=true`` forces it).

Compiled artifacts go to ``TORCHINDUCTOR_CACHE_DIR`` when the user set it, else to a per-user cache
(``$XDG_CACHE_HOME/longtail/inductor``, default ``~/.cache/longtail/inductor``) so that every cell
of a ``compare``, every resume and every later run of the same model share one warm cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

SPEEDUP = 1.06          # compiled / eager images per second, median of the interleaved rounds
COMPILE_SECONDS = 261.0  # the slowest cold compile of ResNet-32 measured (forward + backward)
RESNET32_LEAF_MODULES = 78  # conv, batch norm, ReLU, pooling and linear modules of resnet32


def leaf_modules(model: nn.Module) -> int:
    return sum(1 for module in model.modules() if not any(True for _ in module.children()))


def compile_cost_seconds(model: nn.Module) -> float:
    """The assumed cold-compile time of ``model``: ResNet-32's, scaled by the number of leaf modules
    (compilation traces and generates code per operation), never less than ResNet-32's."""
    return COMPILE_SECONDS * max(1.0, leaf_modules(model) / RESNET32_LEAF_MODULES)


def compile_pays(remaining_steps: int, seconds_per_step: float, cost_seconds: float,
                 speedup: float = SPEEDUP) -> bool:
    """True when compiling saves more than it costs over the remaining steps of the run."""
    saved = remaining_steps * seconds_per_step * (1.0 - 1.0 / speedup)
    return saved > cost_seconds


def use_shared_cache() -> Path:
    """Point torch's inductor cache at the per-user longtail cache unless the user chose one; returns it."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not chosen:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        chosen = str(base / "longtail" / "inductor")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = chosen
    return Path(chosen)
