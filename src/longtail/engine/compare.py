"""`longtail compare`: a grid of methods x seeds (x imbalance factors), each cell an ordinary run.

Cells live in ``OUTPUT/cells/<cell name>``; a cell with ``metrics.json`` is finished and never
rerun, a cell with a checkpoint is resumed, so an interrupted comparison continues where it
stopped. With ``--paired`` (default) seed s means the same long-tailed split, initialisation and
data order for every method, so per-seed differences between methods are not sampling noise.

Stage-2 methods (``crt``, ``lws``: ``model.decoupled``) start from the cell of a stage-1 method with
the same seed and imbalance factor: ``crt:model.init_from=^bs`` names it, and by default it is the
first stage-1 method of ``--methods``. Those cells run after the cells they start from.
"""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from longtail.engine.checkpoint import CHECKPOINT_NAME, atomic_write_json, atomic_write_text
from longtail.engine.config import ConfigError, RunConfig, build_config, dump_yaml
from longtail.report.tables import SUMMARY_COLUMNS, format_percent, markdown_table

# Lower is better for these columns; higher for every other one.
LOWER_IS_BETTER = {"ece"}


@dataclass
class Cell:
    method: str  # a method spec: preset name, optionally with ``:key=value`` overrides
    seed: int
    imbalance_factor: Optional[float]
    config: RunConfig
    label: str
    source: Optional["Cell"] = None  # stage 2: the cell whose trained model this one starts from

    @property
    def name(self) -> str:
        factor = "" if self.imbalance_factor is None else f"-if{self.imbalance_factor:g}"
        method = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.method.replace("=", "-"))
        return f"{method}{factor}-seed{self.seed}"


def parse_method(spec: str) -> tuple[str, list[str]]:
    """``ccar_ce:loss.omega=0.5:optim.lr=0.1`` -> ("ccar_ce", ["loss.omega=0.5", "optim.lr=0.1"])."""
    preset, *overrides = spec.split(":")
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"method spec {spec!r}: each ':'-separated override must look like section.key=value")
    return preset, overrides


def _split_list(text: Optional[str], cast) -> list:
    if not text:
        return []
    try:
        return [cast(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError as error:
        raise ConfigError(f"cannot read the list {text!r}: {error}") from error


def _unpaired_seed(method: str, seed: int) -> int:
    """Without pairing each method draws its own randomness from (method, seed)."""
    return int.from_bytes(hashlib.sha256(f"{method}:{seed}".encode()).digest()[:4], "little")


def plan_cells(args) -> tuple[list[Cell], Path]:
    methods = _split_list(args.methods, str)
    seeds = _split_list(args.seeds, int)
    factors = _split_list(args.imbalance_factors, float) or [None]
    if not methods or not seeds:
        raise ConfigError("--methods and --seeds must each name at least one entry")
    cells = []
    for factor in factors:
        for method in methods:
            for seed in seeds:
                run_seed = seed if args.paired else _unpaired_seed(method, seed)
                preset, method_overrides = parse_method(method)
                overrides = list(args.overrides or []) + method_overrides + [f"train.seed={run_seed}"]
                if factor is not None:
                    overrides.append(f"data.imbalance_factor={factor}")
                if not args.paired:
                    overrides.append(f"data.split_seed={run_seed}")
                config, label = build_config(args.recipe, args.config, overrides, preset)
                cells.append(Cell(method, seed, factor, config, label))
    protocol = (args.recipe or (Path(args.config).stem if args.config else "fashion-mnist-lt")).split("/")[0]
    output = Path(args.output) if args.output else Path(cells[0].config.train.output_dir) / f"compare-{protocol}"
    for cell in cells:
        cell.config.train.output_dir = str(output / "cells")
        cell.config.train.run_name = cell.name
        cell.config.train.progress = False
    _link_stage2_cells(cells, output)
    return cells, output


def _link_stage2_cells(cells: list[Cell], output: Path) -> None:
    """Point every stage-2 cell's ``model.init_from`` at its stage-1 cell (same seed and IF)."""
    by_key = {(c.method, c.seed, c.imbalance_factor): c for c in cells}
    stage1 = [c.method for c in cells if c.config.model.decoupled == "none"]
    for cell in cells:
        source = cell.config.model.init_from
        if cell.config.model.decoupled == "none" and not (source or "").startswith("^"):
            continue
        if source and not source.startswith("^"):
            continue  # an explicit run directory
        method = source[1:] if source else (stage1[0] if stage1 else None)
        if method is None:
            raise ConfigError(f"{cell.method} trains on top of a stage-1 run; add one to --methods (e.g. ce,"
                              f"{cell.method}) or give {cell.method}:model.init_from=^METHOD")
        cell.source = by_key.get((method, cell.seed, cell.imbalance_factor))
        if cell.source is None or cell.source is cell:
            raise ConfigError(f"{cell.method}: model.init_from=^{method} names no other method of this comparison; "
                              f"methods: {', '.join(dict.fromkeys(c.method for c in cells))}")
        cell.config.model.init_from = str(output / "cells" / cell.source.name)
    for cell in cells:
        _stage(cell)  # refuses a cycle before anything runs


def _stage(cell: Cell) -> int:
    """0 for a cell trained from scratch, 1 + its source's stage otherwise."""
    depth, seen = 0, set()
    while cell.source is not None:
        if cell.name in seen:
            raise ConfigError(f"the model.init_from=^METHOD links of {cell.method} go round in a circle")
        seen.add(cell.name)
        cell, depth = cell.source, depth + 1
    return depth


def _cell_state(run_dir: Path) -> str:
    if (run_dir / "metrics.json").is_file():
        return "done"
    if (run_dir / "checkpoints" / CHECKPOINT_NAME).is_file():
        return "resume"
    return "new"


def _run_in_process(cell: Cell, run_dir: Path) -> None:
    from longtail.engine.trainer import train

    if _cell_state(run_dir) == "resume":
        train(cell.config, cell.label, resume_dir=run_dir)
    else:
        train(cell.config, cell.label)


def _run_subprocess(cell: Cell, run_dir: Path, device: Optional[str], threads: int) -> None:
    if _cell_state(run_dir) == "resume":
        command = [sys.executable, "-m", "longtail", "train", "--resume", str(run_dir)]
    else:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        config_path = run_dir.parent / f"{cell.name}.yaml"
        if device:
            cell.config.train.device = device
        cell.config.train.threads = cell.config.train.threads or threads
        atomic_write_text(config_path, dump_yaml(cell.config))
        command = [sys.executable, "-m", "longtail", "train", "--config", str(config_path)]
    log = run_dir.parent / f"{cell.name}.log"
    with open(log, "w") as stream:
        result = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if result.returncode != 0:
        raise RuntimeError(f"cell {cell.name} failed with exit code {result.returncode}; see {log}")


def run_comparison(args) -> Path:
    cells, output = plan_cells(args)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output / "plan.json", {
        "command": sys.argv, "paired": args.paired, "reference": args.reference,
        "cells": [{"name": c.name, "method": c.method, "seed": c.seed, "imbalance_factor": c.imbalance_factor,
                   "label": c.label} for c in cells]})
    pending = [c for c in cells if _cell_state(output / "cells" / c.name) != "done"]
    for cell in pending:
        run_dir = output / "cells" / cell.name
        if _cell_state(run_dir) == "new" and run_dir.exists():
            shutil.rmtree(run_dir)  # started but never checkpointed: nothing worth keeping
    print(f"{len(cells)} cells, {len(cells) - len(pending)} already finished, {len(pending)} to run", flush=True)
    devices = _split_list(args.devices, str)
    jobs = max(1, args.jobs)
    pending.sort(key=_stage)  # stable: stage-1 cells first, in grid order
    if jobs == 1 and not devices:
        for index, cell in enumerate(pending, 1):
            print(f"[{index}/{len(pending)}] {cell.name}", flush=True)
            _run_in_process(cell, output / "cells" / cell.name)
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            for stage in sorted({_stage(c) for c in pending}):  # a stage starts when the one before is done
                wave = [c for c in pending if _stage(c) == stage]
                futures = {pool.submit(_run_subprocess, cell, output / "cells" / cell.name,
                                       devices[i % len(devices)] if devices else None, threads): cell
                           for i, cell in enumerate(wave)}
                for future in concurrent.futures.as_completed(futures):
                    future.result()
                    print(f"finished {futures[future].name}", flush=True)
    write_comparison(output, cells, args.reference or cells[0].method)
    return output


# --------------------------------------------------------------------------- aggregation


def _mean_std(values: list) -> tuple[Optional[float], Optional[float]]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def aggregate(output: Path, cells: list[Cell], reference: str) -> list[dict]:
    """One row per (imbalance factor, method): mean / std over seeds, delta and paired wins vs reference."""
    results = {}
    for cell in cells:
        metrics = json.loads((output / "cells" / cell.name / "metrics.json").read_text())
        results[(cell.imbalance_factor, cell.method, cell.seed)] = metrics["test"]
    methods = list(dict.fromkeys(c.method for c in cells))
    seeds = sorted({c.seed for c in cells})
    factors = list(dict.fromkeys(c.imbalance_factor for c in cells))
    if reference not in methods:
        raise ConfigError(f"--reference {reference} is not among the compared methods: {', '.join(methods)}")
    rows = []
    for factor in factors:
        for method in methods:
            row = {"imbalance_factor": factor, "method": method, "seeds": len(seeds)}
            for key, _ in SUMMARY_COLUMNS:
                mean, std = _mean_std([results[(factor, method, s)].get(key) for s in seeds])
                ref_mean, _ = _mean_std([results[(factor, reference, s)].get(key) for s in seeds])
                row[key] = {"mean": mean, "std": std,
                            "delta": None if mean is None or ref_mean is None else mean - ref_mean}
            wins = sum(results[(factor, method, s)]["accuracy"] > results[(factor, reference, s)]["accuracy"]
                       for s in seeds)
            row["overall_wins_vs_reference"] = wins
            row["per_class_accuracy"] = [
                _mean_std([results[(factor, method, s)]["per_class_accuracy"][j] for s in seeds])[0]
                for j in range(len(results[(factor, method, seeds[0])]["per_class_accuracy"]))]
            rows.append(row)
    return rows


def _best_per_column(rows: list[dict], factor) -> dict:
    best = {}
    for key, _ in SUMMARY_COLUMNS:
        values = [r[key]["mean"] for r in rows if r["imbalance_factor"] == factor and r[key]["mean"] is not None]
        if values:
            best[key] = min(values) if key in LOWER_IS_BETTER else max(values)
    return best


def comparison_markdown(rows: list[dict], reference: str) -> str:
    parts = []
    for factor in dict.fromkeys(r["imbalance_factor"] for r in rows):
        group = [r for r in rows if r["imbalance_factor"] == factor]
        best = _best_per_column(rows, factor)
        header = ["method"] + [title for _, title in SUMMARY_COLUMNS] + [f"Δ Overall vs {reference}", "wins"]
        table_rows = []
        for row in group:
            cells = [row["method"]]
            for key, _ in SUMMARY_COLUMNS:
                mean, std = row[key]["mean"], row[key]["std"]
                text = "-" if mean is None else f"{format_percent(mean)} ± {format_percent(std)}"
                if mean is not None and key in best and abs(mean - best[key]) < 1e-12:
                    text = f"**{text}**"
                cells.append(text)
            delta = row["accuracy"]["delta"]
            cells.append("-" if delta is None else f"{100 * delta:+.2f}")
            cells.append(f"{row['overall_wins_vs_reference']}/{row['seeds']}")
            table_rows.append(cells)
        title = "" if factor is None else f"### imbalance factor {factor:g}\n\n"
        parts.append(title + markdown_table(header, table_rows))
    legend = (f"\n\nTest accuracy in % (mean ± sample std over seeds; ECE in %, lower is better). Bold: best "
              f"per column. Δ: difference of mean overall accuracy to `{reference}`; wins: seeds on which the "
              f"method's overall accuracy beats `{reference}`'s on the same seed.")
    return "\n\n".join(parts) + legend + "\n"


def write_comparison(output: Path, cells: list[Cell], reference: str) -> None:
    rows = aggregate(output, cells, reference)
    atomic_write_json(output / "comparison.json", {"reference": reference, "rows": rows})
    atomic_write_text(output / "comparison.md", comparison_markdown(rows, reference))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["imbalance_factor", "method"] + [f"{key}_{stat}" for key, _ in SUMMARY_COLUMNS
                                                      for stat in ("mean", "std", "delta")] + ["wins", "seeds"])
    for row in rows:
        writer.writerow([row["imbalance_factor"], row["method"]]
                        + [row[key][stat] for key, _ in SUMMARY_COLUMNS for stat in ("mean", "std", "delta")]
                        + [row["overall_wins_vs_reference"], row["seeds"]])
    atomic_write_text(output / "comparison.csv", buffer.getvalue())
    class_counts = json.loads((output / "cells" / cells[0].name / "class_counts.json").read_text())["train_counts"]
    from longtail.report.plots import write_comparison_plots

    write_comparison_plots(output, rows, class_counts)
