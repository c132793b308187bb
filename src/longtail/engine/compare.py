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

from longtail.engine.rundir import lock as run_lock
from longtail.engine.rundir.checkpoint import CHECKPOINT_NAME, atomic_write_json, atomic_write_text
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
    fingerprint: Optional[dict] = None  # the data fingerprint its results must have been made with

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


class CellFailed(RuntimeError):
    """A cell of the grid failed; the grid stopped there. ``code`` is the exit code to return."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# Settings that say where / how fast a cell runs, not what it computes: left out of its identity.
# (headline_metric only chooses how the tables rank the results.)
_VOLATILE = {"train": ("output_dir", "run_name", "progress", "threads", "device", "headline_metric"),
             "model": ("compile",)}  # compiled and eager agree to rounding (tests/test_compile.py)


def _completed(config_dict: dict) -> dict:
    """``config_dict`` with every key the schema has now, at its default where the dict lacks it: a
    setting added to the schema later (at its default) leaves an earlier cell's identity unchanged, so
    a grid resumed after an upgrade reuses its finished cells instead of refusing them all."""
    from longtail.engine.config.schema import TYPED_SECTIONS

    full = RunConfig().to_dict()
    for section, values in config_dict.items():
        if section in TYPED_SECTIONS and isinstance(values, dict) and isinstance(full.get(section), dict):
            full[section] = {**full[section], **values}
        else:
            full[section] = values
    return full


def _identity(config_dict: dict) -> dict:
    identity = json.loads(json.dumps(_completed(config_dict)))
    for section, keys in _VOLATILE.items():
        for key in keys:
            identity.get(section, {}).pop(key, None)
    identity.pop("description", None)
    return identity


def config_hash(config_dict: dict) -> str:
    """A cell's identity: sha256 of its resolved configuration without where / how fast it runs."""
    text = json.dumps(_identity(config_dict), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flatten(mapping: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value and key != "options":
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, dict):
            flat.update({f"{prefix}{k}": v for k, v in value.items()} or {f"{prefix}{key}": {}})
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _changed_settings(old: dict, new: dict, limit: int = 6) -> str:
    before, after = _flatten(_identity(old)), _flatten(_identity(new))
    keys = [k for k in dict.fromkeys([*before, *after]) if before.get(k, "<unset>") != after.get(k, "<unset>")]
    shown = [f"{k}: {before.get(k, '<unset>')!r} -> {after.get(k, '<unset>')!r}" for k in keys[:limit]]
    return ", ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


class _UnreadableConfig(Exception):
    """A cell's config.yaml that is not a config a run wrote (corrupt, edited, python-tagged)."""


def _recorded_config(run_dir: Path) -> Optional[dict]:
    import yaml

    from longtail.engine.config import load_yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        recorded = load_yaml(path.read_text(encoding="utf-8"))  # safe: a python tag is refused, never run
        config_hash(recorded)  # a mapping of sections JSON can hold, as every run writes it
    except (yaml.YAMLError, UnicodeDecodeError, OSError, TypeError, ValueError, AttributeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _UnreadableConfig(f"its config.yaml cannot be read as a run's config: {first}") from None
    if not isinstance(recorded, dict):
        raise _UnreadableConfig("its config.yaml is not a mapping of config sections")
    return recorded


def _check_existing_cells(cells: list[Cell], output: Path) -> None:
    """A finished or resumable cell is reused only if it was made with the same resolved settings and
    the same data; otherwise the comparison is refused before anything runs (never silently reused)."""
    from longtail.engine.rundir.fingerprint import differences, read_recorded

    stale = []
    for cell in cells:
        run_dir = output / "cells" / cell.name
        if _cell_state(run_dir) == "new":
            continue
        try:
            recorded = _recorded_config(run_dir)
        except _UnreadableConfig as error:
            stale.append(f"{cell.name} ({error})")
            continue
        if recorded is None or config_hash(recorded) != config_hash(cell.config.to_dict()):
            change = "no config.yaml" if recorded is None else _changed_settings(recorded, cell.config.to_dict())
            stale.append(f"{cell.name} ({change})")
            continue
        if _cell_state(run_dir) == "done":
            record = read_recorded(run_dir, None)
            problems = differences(record, cell.fingerprint) if record is not None else []
            if problems:
                stale.append(f"{cell.name} (data changed: {'; '.join(problems)})")
    if stale:
        raise ConfigError(
            f"{output} holds cells made with other settings or data than this command asks for: "
            + "; ".join(stale[:5]) + (f"; and {len(stale) - 5} more" if len(stale) > 5 else "")
            + f". Their results cannot be reused. Give another --output, or delete {output / 'cells'} "
              f"(or just those cells) to train them again")


def _attach_fingerprints(cells: list[Cell]) -> None:
    """Build each distinct data setup once, before any cell trains: missing or bad data is reported
    now, and every cell gets the data fingerprint its reused results must match."""
    from longtail.engine.training.data_setup import data_fingerprint_of

    built = {}
    for cell in cells:
        key = json.dumps(cell.config.to_dict()["data"], sort_keys=True)
        if key not in built:
            try:
                built[key] = data_fingerprint_of(cell.config)
            except (ValueError, FileNotFoundError) as error:
                raise ConfigError(f"cell {cell.name}: {error}") from None
        cell.fingerprint = built[key]


def _validate_arguments(args, cells: list[Cell], output: Path) -> str:
    """Every argument checked before the first cell trains. Returns the reference method."""
    methods = list(dict.fromkeys(c.method for c in cells))
    listed = _split_list(args.methods, str)
    if len(listed) != len(set(listed)):
        raise ConfigError(f"--methods names a method twice: {args.methods}")
    seeds = _split_list(args.seeds, int)
    if len(seeds) != len(set(seeds)):
        raise ConfigError(f"--seeds names a seed twice: {args.seeds}")
    factors = _split_list(args.imbalance_factors, float)
    if len(factors) != len(set(factors)):
        raise ConfigError(f"--imbalance-factors names a factor twice: {args.imbalance_factors}")
    reference = args.reference or methods[0]
    if reference not in methods:
        raise ConfigError(f"--reference {reference} is not among the compared methods: {', '.join(methods)}")
    if getattr(args, "jobs", None) is not None and args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    for device in _split_list(getattr(args, "devices", None), str):
        from longtail.engine.runtime.distributed import select_device

        if device != "cpu" and not re.fullmatch(r"cuda(:[0-9]+)?", device):
            raise ConfigError(f"--devices: {device!r} is not a device; use cpu, cuda or cuda:N")
        select_device(device)  # refuses a CUDA device this machine does not have
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file, not a directory")
    from longtail.engine.rundir.runinfo import check_output_dir

    check_output_dir(output)
    return reference


class _Children:
    """Cell subprocesses that are running, so SIGINT / SIGTERM can be passed on to them."""

    def __init__(self):
        import threading

        self.lock = threading.Lock()
        self.running: set = set()
        self.signal_number: Optional[int] = None

    def forward(self, signum, _frame) -> None:
        self.signal_number = signum
        print(f"\nreceived signal {signum}: passing it on to the running cells (they save a checkpoint)",
              file=sys.stderr, flush=True)
        with self.lock:
            for process in self.running:
                if process.poll() is None:
                    process.send_signal(signum)


def _run_in_process(cell: Cell, run_dir: Path, log: Path) -> None:
    """One cell in this process (``--jobs 1``), its output going to its log. A signal reaches the
    trainer's own handler: it saves a checkpoint and raises TrainingInterrupted (exit 128 + N)."""
    import contextlib

    from longtail.engine.training.trainer import train

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as stream, contextlib.redirect_stdout(stream), \
            contextlib.redirect_stderr(stream):
        try:
            if _cell_state(run_dir) == "resume":
                train(cell.config, cell.label, resume_dir=run_dir)
            else:
                train(cell.config, cell.label)
        except Exception:
            import traceback

            traceback.print_exc()  # into the cell's log, like a subprocess cell's
            raise


# Set in a cell subprocess's environment: the pid of the compare that started it (see stop_with_compare).
COMPARE_PID_ENV = "LONGTAIL_COMPARE_PID"


def stop_with_compare() -> None:
    """In a cell subprocess (``longtail train`` started by compare): when the compare that started it
    is gone, however it ended (SIGKILL included), send this process SIGTERM, so the cell saves a
    checkpoint and exits instead of training on unowned. A thread polls the parent pid twice a second."""
    parent = os.environ.get(COMPARE_PID_ENV)
    if not parent:
        return
    import signal
    import threading
    import time

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(0.5)
        print(f"longtail compare (process {parent}) has ended: stopping this cell (it saves a checkpoint)",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-compare", daemon=True).start()


def _lock_cells(cells: list[Cell], output: Path) -> dict:
    """Lock every cell (OUTPUT/cells/<cell>.lock) before anything runs: a cell another compare, or a
    cell process left by a killed one, is still training refuses this comparison (RunLockedError)."""
    locks = {}
    try:
        for cell in cells:
            locks[cell.name] = run_lock.acquire(output / "cells" / f"{cell.name}.lock",
                                                f"the cell {output / 'cells' / cell.name}")
    except BaseException:
        for descriptor in locks.values():
            run_lock.release(descriptor)
        raise
    return locks


def _run_subprocess(cell: Cell, run_dir: Path, log: Path, device: Optional[str], threads: int,
                    children: _Children, lock: Optional[int] = None) -> None:
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
    with open(log, "a", encoding="utf-8") as stream:
        with children.lock:
            if children.signal_number is not None:
                raise CellFailed(f"cell {cell.name} not started: interrupted", 128 + children.signal_number)
            # The cell's lock goes with it: held while it trains, even if this compare is killed.
            process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT,
                                       pass_fds=() if lock is None else (lock,),
                                       env={**os.environ, "OMP_NUM_THREADS": str(threads),
                                            COMPARE_PID_ENV: str(os.getpid())})
            children.running.add(process)
        try:
            code = process.wait()
        finally:
            with children.lock:
                children.running.discard(process)
    if code < 0:  # killed by signal -code (Popen's convention): the shell's 128 + N
        code = 128 - code
    if code != 0:
        raise CellFailed(f"cell {cell.name} failed with exit code {code}; its log: {log}",
                         code if code > 128 else 1)


def _done_line(index: int, total: int, cell: Cell, run_dir: Path, seconds: float) -> str:
    metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    factor = "" if cell.imbalance_factor is None else f" IF {cell.imbalance_factor:g}"
    return (f"cell {index}/{total}: {cell.method}{factor} seed {cell.seed} ... done in {seconds:.0f} s, "
            f"test acc {metrics['accuracy']:.3f}, worst class {metrics['worst_class_accuracy']:.3f}")


def _remove_old_outputs(output: Path) -> None:
    """Tables and plots of an earlier grid would look current if this one fails: remove them first."""
    for path in [*output.glob("comparison.*"), *output.glob("per_class_accuracy*.png"),
                 *output.glob("overall_vs_worst*.png")]:
        path.unlink()


def run_comparison(args) -> Path:
    cells, output = plan_cells(args)
    reference = _validate_arguments(args, cells, output)
    _attach_fingerprints(cells)
    _check_existing_cells(cells, output)
    (output / "cells").mkdir(parents=True, exist_ok=True)
    locks = _lock_cells(cells, output)
    try:
        _run_cells(args, cells, output, reference, locks)
    finally:
        for descriptor in locks.values():
            run_lock.release(descriptor)
    write_comparison(output, cells, reference)
    return output


def write_plan(output: Path, cells: list[Cell], reference: str, paired: bool) -> None:
    """``plan.json``: the command and every cell of the grid (name, method, seed, imbalance factor,
    config hash), which tools that read a grid's cells (tools/paired_deltas.py) go by."""
    atomic_write_json(output / "plan.json", {
        "command": sys.argv, "paired": paired, "reference": reference,
        "cells": [{"name": c.name, "method": c.method, "seed": c.seed, "imbalance_factor": c.imbalance_factor,
                   "label": c.label, "config_hash": config_hash(c.config.to_dict())} for c in cells]})


def _run_cells(args, cells: list[Cell], output: Path, reference: str, locks: dict) -> None:
    import time

    write_plan(output, cells, reference, args.paired)
    pending = [c for c in cells if _cell_state(output / "cells" / c.name) != "done"]
    for cell in pending:
        run_dir = output / "cells" / cell.name
        if _cell_state(run_dir) == "new" and run_dir.exists():
            shutil.rmtree(run_dir)  # started but never checkpointed: nothing worth keeping
    if pending:
        _remove_old_outputs(output)
        _write_partial(output, cells, reference)  # the cells an earlier, stopped run of this grid finished
    print(f"{len(cells)} cells, {len(cells) - len(pending)} already finished, {len(pending)} to run", flush=True)
    devices = _split_list(args.devices, str)
    jobs = args.jobs if args.jobs is not None else default_jobs(devices, len(pending))
    pending.sort(key=_stage)  # stable: stage-1 cells first, in grid order
    total = len(pending)
    if jobs == 1 and not devices:
        for index, cell in enumerate(pending, 1):
            run_dir, log = output / "cells" / cell.name, output / "cells" / f"{cell.name}.log"
            started = time.perf_counter()
            try:
                _run_in_process(cell, run_dir, log)
            except SystemExit as stop:  # TrainingInterrupted: the cell saved a checkpoint
                print(f"cell {index}/{total}: {cell.name} interrupted; its checkpoint is saved. Run the same "
                      f"command again to continue", file=sys.stderr, flush=True)
                raise CellFailed(f"interrupted in cell {cell.name}", int(stop.code or 1)) from None
            except Exception as error:  # noqa: BLE001 - any failure stops the grid, named with its cell
                raise CellFailed(f"cell {index}/{total} {cell.name} failed: {type(error).__name__}: {error}. "
                                 f"The grid stopped there; its log: {log}") from None
            print(_done_line(index, total, cell, run_dir, time.perf_counter() - started), flush=True)
            _write_partial(output, cells, reference)
    else:
        _run_parallel(pending, output, devices, jobs, locks, on_done=lambda: _write_partial(output, cells, reference))


def _write_partial(output: Path, cells: list[Cell], reference: str) -> None:
    """The tables of the cells finished so far, after each cell, so that a grid of hours shows its
    results as they come; a failure here must not stop the grid, so it is reported and skipped."""
    if all((output / "cells" / c.name / "metrics.json").is_file() for c in cells):
        return  # complete: run_comparison writes the final tables
    try:
        write_comparison(output, cells, reference, partial=True)
    except Exception as error:  # noqa: BLE001 - the grid goes on; the final tables are written at the end
        print(f"partial tables not written: {type(error).__name__}: {error}", file=sys.stderr, flush=True)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_jobs(devices: list, cells: int) -> int:
    """``--jobs`` when not given. On a CPU: one single-thread process per core (at most one per cell).
    Measured on 2 cores (BENCHMARKS.md, issue 20): 2 cells x 1 thread give ~1.5x the images/s of
    1 cell x 2 threads on an idle machine and ~7x under load, because a convolution-bound step
    scales poorly over OpenMP threads that wait on each other. With ``--devices``: one cell per
    device. On a CUDA machine without ``--devices``: 1 (the cells would share one GPU)."""
    if devices:
        return max(1, min(len(devices), cells))
    import torch

    if torch.cuda.is_available():
        return 1
    return max(1, min(usable_cores(), cells))


def _run_parallel(pending: list[Cell], output: Path, devices: list, jobs: int, locks: dict,
                  on_done=lambda: None) -> None:
    import signal
    import time

    threads = max(1, usable_cores() // jobs)
    children = _Children()
    previous = {signum: signal.signal(signum, children.forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    total, finished = len(pending), 0
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            for stage in sorted({_stage(c) for c in pending}):  # a stage starts when the one before is done
                wave = [c for c in pending if _stage(c) == stage]
                started = time.perf_counter()
                futures = {pool.submit(_run_subprocess, cell, output / "cells" / cell.name,
                                       output / "cells" / f"{cell.name}.log",
                                       devices[i % len(devices)] if devices else None, threads, children,
                                       locks.get(cell.name)): cell
                           for i, cell in enumerate(wave)}
                try:
                    for future in concurrent.futures.as_completed(futures):
                        future.result()
                        finished += 1
                        cell = futures[future]
                        print(_done_line(finished, total, cell, output / "cells" / cell.name,
                                         time.perf_counter() - started), flush=True)
                        on_done()
                except CellFailed:
                    for future in futures:
                        future.cancel()
                    if children.signal_number is not None:  # we were interrupted: every cell already got it
                        concurrent.futures.wait(futures)
                        raise CellFailed("interrupted; the cells saved checkpoints. Run the same command again "
                                         "to continue", 128 + children.signal_number) from None
                    # stop the cells still running: they save a checkpoint and can be continued
                    with children.lock:
                        for process in children.running:
                            if process.poll() is None:
                                process.send_signal(signal.SIGTERM)
                    raise
                if children.signal_number is not None:
                    raise CellFailed("interrupted", 128 + children.signal_number)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --------------------------------------------------------------------------- aggregation


def _mean_std(values: list) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample std; the std is None for a single value (one seed has no spread, and 0.0 would
    claim a spread of zero)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, std


def aggregate(output: Path, cells: list[Cell], reference: str, partial: bool = False) -> list[dict]:
    """One row per (imbalance factor, method): mean / std over seeds, delta and paired wins vs reference
    (on overall accuracy, and on the headline metric: ``train.headline_metric`` of the reference's cells).

    ``partial``: only the cells that have finished (a grid still running): a row's mean and std are over
    its finished seeds (``seeds``), its delta and wins over the seeds on which the reference has finished
    too (``paired_seeds``); methods with no finished cell have no row. Complete grids give the same rows
    either way (every seed paired)."""
    headline = next((c.config.train.headline_metric for c in cells if c.method == reference),
                    cells[0].config.train.headline_metric)
    results = {}
    for cell in cells:
        path = output / "cells" / cell.name / "metrics.json"
        if partial and not path.is_file():
            continue
        results[(cell.imbalance_factor, cell.method, cell.seed)] = json.loads(path.read_text())["test"]
    methods = list(dict.fromkeys(c.method for c in cells))
    seeds = sorted({c.seed for c in cells})
    factors = list(dict.fromkeys(c.imbalance_factor for c in cells))
    if reference not in methods:
        raise ConfigError(f"--reference {reference} is not among the compared methods: {', '.join(methods)}")
    rows = []
    for factor in factors:
        for method in methods:
            done = [s for s in seeds if (factor, method, s) in results]
            paired = [s for s in done if (factor, reference, s) in results]
            if not done:
                continue
            row = {"imbalance_factor": factor, "method": method, "seeds": len(done), "paired_seeds": len(paired)}
            for key, _ in SUMMARY_COLUMNS:
                mean, std = _mean_std([results[(factor, method, s)].get(key) for s in done])
                paired_mean, _ = _mean_std([results[(factor, method, s)].get(key) for s in paired])
                ref_mean, _ = _mean_std([results[(factor, reference, s)].get(key) for s in paired])
                row[key] = {"mean": mean, "std": std,
                            "delta": None if paired_mean is None or ref_mean is None else paired_mean - ref_mean}
            for key, name in (("accuracy", "overall_wins_vs_reference"), (headline, "headline_wins_vs_reference")):
                row[name] = sum(results[(factor, method, s)][key] > results[(factor, reference, s)][key]
                                for s in paired)
            row["headline"] = headline
            row["per_class_accuracy"] = [
                _mean_std([results[(factor, method, s)]["per_class_accuracy"][j] for s in done])[0]
                for j in range(len(results[(factor, method, done[0])]["per_class_accuracy"]))]
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
    """The comparison table(s), one per imbalance factor. With several seeds each cell is mean ± sample
    std and a `wins` column counts paired wins; with one seed there is no spread, so only the value is
    shown (no "± 0.00", no "wins 1/1"). A partial grid whose methods have finished different numbers of
    seeds gets a `seeds` column, and a method with one finished seed shows its value without ±."""
    parts = []
    several = any(r["seeds"] > 1 for r in rows)
    mixed = len({r["seeds"] for r in rows}) > 1
    for factor in dict.fromkeys(r["imbalance_factor"] for r in rows):
        group = [r for r in rows if r["imbalance_factor"] == factor]
        best = _best_per_column(rows, factor)
        deltas = _delta_keys(group)
        header = (["method"] + [title for _, title in SUMMARY_COLUMNS]
                  + [f"Δ {_TITLES[key]} vs {reference}" for key in deltas] + (["wins"] if several else [])
                  + (["seeds"] if mixed else []))
        table_rows = []
        for row in group:
            cells = [row["method"]]
            for key, _ in SUMMARY_COLUMNS:
                mean, std = row[key]["mean"], row[key]["std"]
                text = "-" if mean is None else (format_percent(mean) if std is None
                                                 else f"{format_percent(mean)} ± {format_percent(std)}")
                if mean is not None and key in best and abs(mean - best[key]) < 1e-12:
                    text = f"**{text}**"
                cells.append(text)
            for key in deltas:
                delta = row[key]["delta"]
                cells.append("-" if delta is None else f"{100 * delta:+.2f}")
            if several:
                cells.append(f"{row.get('headline_wins_vs_reference', row['overall_wins_vs_reference'])}/"
                             f"{row.get('paired_seeds', row['seeds'])}")
            if mixed:
                cells.append(str(row["seeds"]))
            table_rows.append(cells)
        title = "" if factor is None else f"### imbalance factor {factor:g}\n\n"
        parts.append(title + markdown_table(header, table_rows))
    headline = rows[0].get("headline", "accuracy")
    measure = _WORDS[headline]
    if several:
        legend = (f"\n\nTest accuracy in % (mean ± sample std over seeds; ECE in %, lower is better). Bold: best "
                  f"per column. Δ: difference of mean {measure} to `{reference}`; wins: seeds on which the "
                  f"method's {measure} beats `{reference}`'s on the same seed.")
        if mixed:
            legend += (" seeds: the method's finished seeds, which its mean is over; a value without ± is "
                       "from one seed, which has no spread.")
    else:
        legend = (f"\n\nTest accuracy in % of one seed (ECE in %, lower is better). Bold: best per column. "
                  f"Δ: difference of {measure} to `{reference}`.")
    if headline != "accuracy":
        legend += (f" Headline: {measure} (train.headline_metric; mean per-class recall, which an imbalanced "
                   f"test split does not weight towards its large classes); overall accuracy beside it.")
    return "\n\n".join(parts) + legend + "\n"


_TITLES = dict(SUMMARY_COLUMNS)
_WORDS = {"accuracy": "overall accuracy", "balanced_accuracy": "balanced accuracy",
          "worst_class_accuracy": "worst-class accuracy"}


def _delta_keys(rows: list[dict]) -> list[str]:
    """The metrics with a Δ column: the headline, then overall accuracy if that is not the headline."""
    headline = rows[0].get("headline", "accuracy") if rows else "accuracy"
    return list(dict.fromkeys([headline, "accuracy"]))


# --------------------------------------------------------------------------- identical methods and verdict

# A logit-adjusted loss at tau = 1 adds log(prior) to the logits; Balanced Softmax adds log(count) =
# log(prior) + log(N), the same shift for every class, so the softmax, the loss and its gradient are
# identical. The *_la losses at tau 1 are therefore their *_bs twins.
_TAU_ONE_TWINS = {"logit_adjusted": "balanced_softmax", "focal_la": "focal_bs", "ccar_la": "ccar_bs"}


def canonical_loss(name: str, options: dict) -> tuple[str, dict, Optional[str]]:
    """(name, every option with its default filled in, why it was renamed or None)."""
    import inspect

    from longtail.losses.registry import ALIASES, LOSSES

    name = ALIASES.get(name, name)
    builder = LOSSES.get(name)
    full = dict(options)
    if builder is not None:
        for key, parameter in inspect.signature(builder).parameters.items():
            if key != "class_counts" and parameter.default is not inspect.Parameter.empty:
                full.setdefault(key, parameter.default)
    if name in _TAU_ONE_TWINS and float(full.get("tau", 1.0)) == 1.0:
        twin = _TAU_ONE_TWINS[name]
        full.pop("tau", None)
        return twin, full, f"{name} with tau 1 is {twin}"
    return name, full, None


def _canonical_config(config: RunConfig) -> tuple[str, list]:
    import inspect

    from longtail.regularizers import REGULARIZERS

    identity = _identity(config.to_dict())
    identity["train"].pop("seed", None)
    name, options, reason = canonical_loss(config.loss.name, config.loss.options)
    identity["loss"] = {"name": name, "options": options}
    constructor = REGULARIZERS.get(config.regularizer.name)
    if constructor is not None:  # every option with its default filled in
        full = dict(config.regularizer.options)
        for key, parameter in inspect.signature(constructor.__init__).parameters.items():
            if key not in ("self", "class_counts") and parameter.default is not inspect.Parameter.empty:
                full.setdefault(key, parameter.default)
        identity["regularizer"] = {"name": config.regularizer.name, "options": full}
    return json.dumps(identity, sort_keys=True, default=str), [reason] if reason else []


def identical_methods(cells: list[Cell]) -> list[str]:
    """Lines naming methods whose resolved configurations are the same computation (by construction,
    e.g. `la` at tau 1 and `bs`), found from the configurations, not from the method names."""
    groups: dict = {}
    for cell in cells:
        key, reasons = _canonical_config(cell.config)
        entry = groups.setdefault((cell.imbalance_factor, key), {"methods": [], "reasons": []})
        if cell.method not in entry["methods"]:
            entry["methods"].append(cell.method)
            entry["reasons"].extend(r for r in reasons if r not in entry["reasons"])
    lines = []
    for (factor, _), entry in groups.items():
        if len(entry["methods"]) > 1:
            why = "; ".join(entry["reasons"]) or "their resolved configurations are equal"
            where = "" if factor is None else f" (IF {factor:g})"
            lines.append(f"{' and '.join(entry['methods'])}{where} are identical by construction ({why}: the same "
                         f"loss, gradient and run), so their rows are equal.")
    return list(dict.fromkeys(lines))


def verdict(rows: list[dict], notes: list[str]) -> str:
    """Plain sentences: which method led on overall and on worst-class accuracy, and whether the lead
    exceeds the seed spread (with one seed: that there is none to judge by)."""
    lines = []
    for factor in dict.fromkeys(r["imbalance_factor"] for r in rows):
        group = [r for r in rows if r["imbalance_factor"] == factor and r["accuracy"]["mean"] is not None]
        where = "" if factor is None else f" at imbalance factor {factor:g}"
        keys = list(dict.fromkeys(_delta_keys(group) + ["worst_class_accuracy"]))
        for key, title in ((key, _WORDS[key]) for key in keys):
            ranked = sorted(group, key=lambda r: r[key]["mean"], reverse=True)
            leader = ranked[0]
            tied = [r["method"] for r in ranked if abs(r[key]["mean"] - leader[key]["mean"]) < 1e-12]
            head = (f"{' and '.join(tied)} tie for the lead" if len(tied) > 1 else f"{leader['method']} led")
            text = f"On {title}{where}, {head} ({format_percent(leader[key]['mean'])} %)"
            runner = next((r for r in ranked if r["method"] not in tied), None)
            if runner is None:
                lines.append(text + ".")
                continue
            margin = leader[key]["mean"] - runner[key]["mean"]
            text += f", {100 * margin:.2f} points ahead of {runner['method']} ({format_percent(runner[key]['mean'])} %)"
            if leader["seeds"] < 2 or runner["seeds"] < 2:
                text += ("; with one seed there is no seed spread, so this says nothing about whether the lead "
                         "is larger than run-to-run noise (use --seeds 0,1,2)")
            else:
                spread = max(leader[key]["std"], runner[key]["std"])
                relation = "exceeds" if margin > spread else "does not exceed"
                text += (f"; the margin {relation} the seed spread (sample std up to {100 * spread:.2f} points "
                         f"over {leader['seeds']} seeds)")
            lines.append(text + ".")
    return "\n".join(lines + notes)


def write_comparison(output: Path, cells: list[Cell], reference: str, partial: bool = False) -> None:
    """comparison.md / .csv / .json and the plots. ``partial``: of the cells finished so far, while the
    grid runs (:func:`aggregate`); every file then says so, and the finished grid overwrites them."""
    rows = aggregate(output, cells, reference, partial=partial)
    finished = [c for c in cells if (output / "cells" / c.name / "metrics.json").is_file()] if partial else cells
    if not finished:
        return
    atomic_write_json(output / "comparison.json", {
        "reference": reference, "complete": not partial, "finished_cells": len(finished), "cells_in_grid": len(cells),
        "rows": rows, "cells": {c.name: config_hash(c.config.to_dict()) for c in finished}})
    notes = identical_methods(cells)
    banner = (f"**Partial: {len(finished)} of {len(cells)} cells finished.** The grid is running or was stopped "
              f"(run the same command to continue); means are over each method's finished seeds, deltas and "
              f"wins over the seeds its reference `{reference}` has finished too.\n\n") if partial else ""
    atomic_write_text(output / "comparison.md", banner + comparison_markdown(rows, reference) + "\n"
                      + verdict(rows, notes) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["imbalance_factor", "method"] + [f"{key}_{stat}" for key, _ in SUMMARY_COLUMNS
                                                      for stat in ("mean", "std", "delta")]
                    + ["wins", "seeds", "headline", "headline_wins", "paired_seeds"])
    for row in rows:
        writer.writerow([row["imbalance_factor"], row["method"]]
                        + [row[key][stat] for key, _ in SUMMARY_COLUMNS for stat in ("mean", "std", "delta")]
                        + [row["overall_wins_vs_reference"], row["seeds"], row["headline"],
                           row["headline_wins_vs_reference"], row["paired_seeds"]])
    atomic_write_text(output / "comparison.csv", buffer.getvalue())
    class_counts = json.loads((output / "cells" / finished[0].name / "class_counts.json").read_text())["train_counts"]
    from longtail.report.plots import write_comparison_plots

    write_comparison_plots(output, rows, class_counts)
