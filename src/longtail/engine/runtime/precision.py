"""Which autocast precision a run uses: ``train.precision=auto`` resolved against the hardware.

``auto`` means bf16 autocast where the hardware computes bf16 natively, fp32 elsewhere:
- a CUDA GPU with native bf16 (compute capability 8.0 and up: A100, H100, RTX 30xx and later);
- a CPU with ``avx512_bf16`` or AMX (``amx_bf16``) in its ``/proc/cpuinfo`` flags (Intel Cooper
  Lake / Sapphire Rapids and later, AMD Zen 4 and later). Other x86 CPUs would run bf16 through
  emulation, which is slower than fp32, so they stay fp32.

Only the model's forward runs under autocast; the losses (CCAR's weight included), CAR (its
surrogate, EMA and power iteration) and the metrics compute in float32 whatever the logits'
dtype (tests/test_precision.py pins this). fp16 is never chosen automatically: it needs a grad
scaler and overflows where bf16 does not.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Precision:
    requested: str  # what the config says: auto | fp32 | bf16 | fp16
    chosen: str     # what runs: fp32 | bf16 | fp16
    reason: str

    def to_dict(self) -> dict:
        return {"requested": self.requested, "chosen": self.chosen, "reason": self.reason}


@functools.lru_cache(maxsize=None)
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_native(flags: frozenset[str] | set[str] | None = None) -> tuple[bool, str]:
    flags = cpu_flags() if flags is None else flags
    found = [flag for flag in CPU_BF16_FLAGS if flag in flags]
    if found:
        return True, f"CPU has {' and '.join(found)}: native bf16"
    if not flags:
        return False, "CPU features unknown (no /proc/cpuinfo flags): fp32"
    return False, "CPU lacks avx512_bf16 and amx_bf16 (bf16 would be emulated, slower than fp32): fp32"


def cuda_bf16_native(device: torch.device) -> tuple[bool, str]:
    name = torch.cuda.get_device_name(device)
    major, minor = torch.cuda.get_device_capability(device)
    if major >= 8:
        return True, f"{name} (compute capability {major}.{minor}) has native bf16"
    return False, f"{name} (compute capability {major}.{minor}) has no native bf16 (needs 8.0+): fp32"


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """The precision a run on ``device`` uses for ``train.precision=requested``."""
    if requested != "auto":
        return Precision(requested, requested, "set in the config")
    if device.type == "cuda":
        native, reason = cuda_bf16_native(device)
    elif device.type == "cpu":
        native, reason = cpu_bf16_native()
    else:
        native, reason = False, f"device type {device.type}: fp32"
    return Precision(requested, "bf16" if native else "fp32", reason)


def autocast_context(device: torch.device, precision: str):
    """Autocast for the model's forward at ``precision`` (``auto`` is resolved for ``device``)."""
    chosen = resolve_precision(precision, device).chosen
    if chosen == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if chosen == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
