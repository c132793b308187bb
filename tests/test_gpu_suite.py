"""The one-command GPU suite runs in its CI-sized form on any machine, so it cannot rot unnoticed
before a GPU is lent. (Its GPU figures live in BENCHMARKS.md, never in tests.)"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


def test_quick_suite_measures_every_section_and_says_what_it_skipped(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--quick", "--force-cpu", "--out", str(tmp_path)])
    sections = results["sections"]
    assert sections["pipeline"]["images_per_s"] > 0
    assert all(row["images_per_s"] > 0 for row in sections["files"]["rows"].values())
    assert sections["car"]["exact_over_power"] > 0 and sections["car"]["classes"] == 100
    eager = sections["recipe"]["variants"]["eager"]
    assert eager["wall_s"] > eager["train_s"] > 0 and eager["precision"] in ("bf16", "fp32")
    assert json.loads((tmp_path / "gpu_suite.json").read_text())["sections"]["done"] is True
    rows = (tmp_path / "gpu_suite.md").read_text()
    assert rows.count("skipped: needs a CUDA GPU") == 2  # GPU decoding; compile / CUDA graphs
    assert "| CIFAR-100-LT ResNet-32 recipe, 1 epoch(s), eager" in rows
    assert "GPU rows are skipped" in capsys.readouterr().out
