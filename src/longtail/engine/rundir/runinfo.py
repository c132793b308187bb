"""What makes a run directory self-describing: its name, environment and git revision."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

from longtail._version import __version__


def check_output_dir(output_dir) -> None:
    """Refuse (ConfigError, exit 2) an output directory that cannot hold run directories: a file, or
    one this user cannot write to (checked on the nearest existing ancestor when it does not exist yet)."""
    from longtail.engine.config import ConfigError

    path = Path(output_dir)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"train.output_dir={output_dir}: {probe} is a file, not a directory; choose another "
                          f"train.output_dir")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"train.output_dir={output_dir}: {probe} is not writable by this user; choose another "
                          f"train.output_dir")


def create_run_dir(config, label: str) -> Path:
    """A fresh directory under train.output_dir, named after the recipe and the time."""
    from longtail.engine.config import check_run_name

    check_run_name(config.train.run_name)  # never a path out of output_dir (also checked with the config)
    check_output_dir(config.train.output_dir)
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
