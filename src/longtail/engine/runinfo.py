"""What makes a run directory self-describing: its name, environment and git revision."""

from __future__ import annotations

import datetime
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

from longtail import __version__


def create_run_dir(config, label: str) -> Path:
    """A fresh directory under train.output_dir, named after the recipe and the time."""
    base = Path(config.train.output_dir)
    name = config.train.run_name or (
        re.sub(r"[^A-Za-z0-9_.-]+", "_", label) + "-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    )
    run_dir = base / name
    suffix = 1
    while run_dir.exists() and any(run_dir.iterdir()):
        run_dir = base / f"{name}-{suffix}"
        suffix += 1
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


def git_revision() -> str | None:
    try:
        root = Path(__file__).resolve().parents[3]
        output = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5)
        if output.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return output.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info(device: torch.device, context) -> dict:
    info = {
        "longtail": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "world_size": context.world_size,
        "git_revision": git_revision(),
        "command": sys.argv,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    return info
