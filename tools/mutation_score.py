#!/usr/bin/env python
"""Mutation score of the test suite: how many small deliberate changes to the library do the
tests catch? Not part of CI (minutes to hours); the recorded result lives in docs/mutation.md.

A small AST-based mutation tool (no dependency): for each package of src/longtail it enumerates
mutation sites, draws a fixed-seed sample, and for each mutant copies src/ to a scratch
directory, rewrites the one module with the change, and runs the tests mapped to that module
(``TESTS`` below) with the scratch copy first on PYTHONPATH (subprocesses the tests start inherit
it). A mutant is *caught* when the tests fail or exceed the per-mutant timeout, *survived* when
they pass. The working tree is never modified.

Mutation kinds (one change per mutant):
  binop     arithmetic operator swap   (+ <-> -, * <-> /, ** -> *, // -> /, % -> *)
  compare   comparison swap            (< <-> <=, > <-> >=, == <-> !=, is <-> is not, in <-> not in)
  boolop    and <-> or
  not       drop a `not`
  negate    drop a unary minus
  const     numeric constant tweak     (0 -> 1, 1 -> 0 / 2, n -> n + 1, x -> 2x for floats)
  bool      True <-> False
  call      remove a statement that is a bare call (`x.update(...)` -> `pass`)
  return    `return <expr>` -> `return None`  (only for non-trivial expressions)
Docstrings, strings, type annotations, raise messages and print/logging calls are not mutated.

    python tools/mutation_score.py --per-package 30 --seed 0 --timeout 180
    python tools/mutation_score.py --packages losses --list        # the sampled mutants, no run
    python tools/mutation_score.py --breaks tools/engine_breaks.json  # hand-written breaks
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGES = ("engine", "losses", "regularizers", "metrics", "data")

# Which tests can catch a change in which module (path relative to src/longtail). Slow end-to-end
# files (test_resume.py, test_torchrun*.py: 20-60 s each) are left out to keep a sample feasible on
# two cores; the mutants they alone would catch count as survivors (a conservative score).
TESTS = {
    "losses/contrastive.py": ["test_contrastive.py"],
    "losses/": ["test_losses.py", "test_losses_pinned.py", "test_ccar.py", "test_engine_options.py"],
    "regularizers/": ["test_car.py", "test_bounds.py", "test_regularizer_edges.py", "test_car_distributed.py"],
    "metrics/": ["test_metrics.py", "test_metrics_edges.py", "test_bounds.py"],
    "data/sampling/samplers.py": ["test_samplers.py", "test_engine_options.py"],
    "data/transforms/mixing.py": ["test_mixing.py", "test_engine_options.py"],
    "data/loading/loader.py": ["test_loader.py", "test_engine_options.py"],
    "data/transforms/augment.py": ["test_transforms.py", "test_loader.py"],
    "data/datasets/cifar.py": ["test_data_cifar.py", "test_safe_loading.py"],
    "data/datasets/idx.py": ["test_data_idx.py"],
    "data/datasets/listfile.py": ["test_data_listfile.py"],
    "data/datasets/imagefolder.py": ["test_data_listfile.py"],
    "data/splits/imbalance.py": ["test_data_longtail.py"],
    "data/transforms/concutmix.py": ["test_concutmix_data.py"],
    "data/loading/pair_loader.py": ["test_concutmix_engine.py", "test_concutmix_data.py"],
    "data/transforms/views.py": ["test_concutmix_engine.py", "test_concutmix_data.py"],
    "data/transforms/preprocess.py": ["test_preprocess.py", "test_transforms.py"],
    "data/datasets/imagefiles.py": ["test_image_files.py", "test_data_listfile.py", "test_loader.py"],
    "data/": ["test_data_builtin.py", "test_data_longtail.py", "test_data_idx.py", "test_data_listfile.py",
              "test_data_cifar.py"],
    "engine/compare.py": ["test_compare_aggregation.py", "test_compare.py"],
    "engine/evaluation/posthoc.py": ["test_posthoc.py"],
    "engine/evaluation/inference.py": ["test_inference.py"],
    "engine/methods/contrastive.py": ["test_concutmix_engine.py"],
    "engine/training/data_setup.py": ["test_engine_options.py", "test_data_listfile.py", "test_data_builtin.py",
                             "test_data_longtail.py", "test_data_idx.py", "test_cli.py"],
    "engine/config/validate.py": ["test_engine_config.py", "test_engine_options.py", "test_protocols.py",
                         "test_recipe_references.py"],
    "engine/rundir/checkpoint.py": ["test_checkpoint.py", "test_safe_loading.py", "test_interrupts.py"],
    "engine/training/components.py": ["test_engine_options.py", "test_decoupled.py", "test_safe_loading.py"],
    "engine/training/schedules.py": ["test_engine_options.py", "test_engine_config.py", "test_protocols.py"],
    "engine/evaluation/evaluate.py": ["test_engine_options.py", "test_posthoc.py", "test_selection.py"],
    "engine/training/trainer.py": ["test_engine_options.py", "test_interrupts.py", "test_decoupled.py", "test_selection.py"],
    "engine/": ["test_engine_options.py", "test_interrupts.py", "test_selection.py", "test_engine_config.py",
                "test_cli.py"],
}

SKIP_CALLS = {"print", "warn", "warning", "info", "debug", "set_postfix", "update_progress", "flush"}


def tests_for(module: str) -> list[str]:
    """The mapped test files of ``module`` (most specific key wins)."""
    for key in sorted(TESTS, key=len, reverse=True):
        if module == key or (key.endswith("/") and module.startswith(key)):
            return [str(ROOT / "tests" / name) for name in TESTS[key] if (ROOT / "tests" / name).exists()]
    return []


@dataclass
class Mutant:
    module: str  # relative to src/longtail
    index: int  # position among the module's sites (stable for a given source)
    line: int
    kind: str
    description: str

    @property
    def key(self) -> str:
        return f"{self.module}:{self.line}:{self.kind}:{self.index}"


_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult,
          ast.FloorDiv: ast.Div, ast.Mod: ast.Mult}
_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.FloorDiv: "//", ast.Mod: "%",
           ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is",
           ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}


def _tweak(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return {0: 1, 1: 0}.get(value, value + 1)
    if isinstance(value, float):
        return 1.0 if value == 0 else value * 2
    return None


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


class _Sites(ast.NodeTransformer):
    """Walks a module in a fixed order; lists mutation sites, or applies the one at ``target``."""

    def __init__(self, target: int | None = None):
        self.target = target
        self.sites: list[tuple[int, str, str]] = []
        self.applied: str | None = None

    def _site(self, node, kind, description) -> bool:
        index = len(self.sites)
        self.sites.append((getattr(node, "lineno", 0), kind, description))
        return index == self.target

    # -- parts never mutated
    def visit_Expr(self, node):
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return node  # docstring
        if isinstance(node.value, ast.Call) and _call_name(node.value) not in SKIP_CALLS:
            if self._site(node, "call", f"remove call {_call_name(node.value)}(...)"):
                self.applied = "call"
                return ast.copy_location(ast.Pass(), node)
        return self.generic_visit(node)

    def visit_Raise(self, node):
        return node  # the message and the exception type are not behaviour worth a mutant

    def visit_AnnAssign(self, node):
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def visit_arg(self, node):
        return node  # annotations

    def visit_FunctionDef(self, node):
        node.returns = node.returns  # annotations untouched
        node.body = [self.visit(statement) for statement in node.body]
        node.decorator_list = node.decorator_list
        node.args.defaults = [self.visit(d) for d in node.args.defaults]
        node.args.kw_defaults = [self.visit(d) if d is not None else None for d in node.args.kw_defaults]
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_JoinedStr(self, node):
        return node

    def visit_Call(self, node):
        if _call_name(node) in SKIP_CALLS:
            return node
        return self.generic_visit(node)

    # -- mutations
    def visit_BinOp(self, node):
        self.generic_visit(node)
        swap = _BINOP.get(type(node.op))
        if swap and not (isinstance(node.left, ast.Constant) and isinstance(node.left.value, str)):
            if self._site(node, "binop", f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[swap]}"):
                node.op = swap()
        return node

    def visit_AugAssign(self, node):
        self.generic_visit(node)
        swap = _BINOP.get(type(node.op))
        if swap and self._site(node, "binop", f"{_SYMBOL[type(node.op)]}= -> {_SYMBOL[swap]}="):
            node.op = swap()
        return node

    def visit_Compare(self, node):
        self.generic_visit(node)
        for position, op in enumerate(node.ops):
            swap = _COMPARE.get(type(op))
            if swap and self._site(node, "compare", f"{_SYMBOL[type(op)]} -> {_SYMBOL[swap]}"):
                node.ops[position] = swap()
        return node

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        swap = ast.Or if isinstance(node.op, ast.And) else ast.And
        if self._site(node, "boolop", f"{'and' if swap is ast.Or else 'or'} -> {'or' if swap is ast.Or else 'and'}"):
            node.op = swap()
        return node

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, ast.Not) and self._site(node, "not", "drop `not`"):
            return node.operand
        if isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
            if self._site(node, "negate", "drop unary minus"):
                return node.operand
        return node

    def visit_Constant(self, node):
        value = node.value
        if isinstance(value, bool):
            if self._site(node, "bool", f"{value} -> {not value}"):
                return ast.copy_location(ast.Constant(not value), node)
        elif isinstance(value, (int, float)):
            new = _tweak(value)
            if new is not None and self._site(node, "const", f"{value!r} -> {new!r}"):
                return ast.copy_location(ast.Constant(new), node)
        return node

    def visit_Return(self, node):
        self.generic_visit(node)
        if node.value is not None and not isinstance(node.value, (ast.Constant, ast.Name)):
            if self._site(node, "return", "return None"):
                node.value = ast.Constant(None)
        return node


def module_tree(module: str, source: Path = SRC) -> ast.Module:
    return ast.parse((source / "longtail" / module).read_text())


def enumerate_mutants(module: str, source: Path = SRC) -> list[Mutant]:
    walker = _Sites()
    walker.visit(module_tree(module, source))
    return [Mutant(module, i, line, kind, description) for i, (line, kind, description) in enumerate(walker.sites)]


def mutated_source(mutant: Mutant, source: Path = SRC) -> str:
    walker = _Sites(target=mutant.index)
    tree = walker.visit(module_tree(mutant.module, source))
    return ast.unparse(ast.fix_missing_locations(tree))


def package_modules(package: str, source: Path = SRC) -> list[str]:
    base = source / "longtail" / package
    return sorted(str(p.relative_to(source / "longtail")) for p in base.rglob("*.py") if p.name != "__init__.py")


def sample(package: str, count: int, seed: int, source: Path = SRC) -> list[Mutant]:
    mutants = [m for module in package_modules(package, source) if tests_for(module)
               for m in enumerate_mutants(module, source)]
    return sorted(random.Random(f"{seed}:{package}").sample(mutants, min(count, len(mutants))),
                  key=lambda m: (m.module, m.index))


def run_tests(src_copy: Path, tests: list[str], timeout: float, extra: list[str] = ()) -> tuple[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{src_copy}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.time()
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests, *extra]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the whole group: torchrun workers included
        process.wait()
        return "timeout", time.time() - started
    return ("survived" if code == 0 else "caught"), time.time() - started


def fresh_copy(snapshot: Path, scratch: Path) -> Path:
    """A private copy of the source snapshot to mutate (the snapshot is taken once per run, so a
    working tree that changes during a long run does not mix versions)."""
    src_copy = scratch / "src"
    if src_copy.exists():
        shutil.rmtree(src_copy)
    shutil.copytree(snapshot, src_copy)
    return src_copy


def run_mutant(mutant: Mutant, timeout: float, scratch: Path, snapshot: Path) -> dict:
    src_copy = fresh_copy(snapshot, scratch)
    (src_copy / "longtail" / mutant.module).write_text(mutated_source(mutant, snapshot))
    outcome, seconds = run_tests(src_copy, tests_for(mutant.module), timeout)
    return {"key": mutant.key, "module": mutant.module, "line": mutant.line, "kind": mutant.kind,
            "description": mutant.description, "outcome": outcome, "seconds": round(seconds, 1)}


def run_breaks(path: Path, timeout: float, scratch: Path, snapshot: Path) -> list[dict]:
    """Hand-written breaks: {name, file, old, new, tests} applied to a copy of src/ one at a time."""
    results = []
    for item in json.loads(path.read_text()):
        src_copy = fresh_copy(snapshot, scratch)
        target = src_copy / Path(item["file"]).relative_to("src")
        text = target.read_text()
        if item["old"] not in text:
            results.append({"name": item["name"], "outcome": "not applicable (text not found)"})
            print(f"{'n/a':8} {item['name']}", flush=True)
            continue
        target.write_text(text.replace(item["old"], item["new"], 1))
        tests = [str(ROOT / t) if t.startswith("tests/") else t for t in item["tests"]]
        outcome, seconds = run_tests(src_copy, tests, timeout)
        results.append({"name": item["name"], "outcome": outcome, "seconds": round(seconds, 1)})
        print(f"{outcome:8} {item['name']} ({seconds:.0f} s)", flush=True)
    return results


def summarise(results: list[dict]) -> dict:
    summary = {}
    for package in PACKAGES:
        rows = [r for r in results if r["module"].startswith(package + "/")]
        if rows:
            caught = sum(r["outcome"] in ("caught", "timeout") for r in rows)
            summary[package] = {"mutants": len(rows), "caught": caught, "score": round(caught / len(rows), 3)}
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packages", default=",".join(PACKAGES))
    parser.add_argument("--per-package", type=int, default=30, help="mutants sampled per package")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=180, help="seconds per mutant (a timeout counts as caught)")
    parser.add_argument("--list", action="store_true", help="print the sampled mutants and exit")
    parser.add_argument("--only", help="run just these mutant keys (comma-separated, from a report)")
    parser.add_argument("--breaks", type=Path, help="run hand-written breaks from this JSON file instead")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="longtail-mutants-"))
    snapshot = scratch / "snapshot"
    shutil.copytree(SRC, snapshot, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    try:
        if args.breaks:
            results = run_breaks(args.breaks, args.timeout, scratch, snapshot)
            if args.output:
                args.output.write_text(json.dumps(results, indent=1) + "\n")
            missed = [r["name"] for r in results if r["outcome"] == "survived"]
            print(f"{len(results) - len(missed)}/{len(results)} breaks caught; missed: {missed}")
            return 0
        packages = [p for p in args.packages.split(",") if p]
        mutants = [m for package in packages for m in sample(package, args.per_package, args.seed, snapshot)]
        if args.only:
            wanted = set(args.only.split(","))
            mutants = [m for package in packages for module in package_modules(package, snapshot)
                       for m in enumerate_mutants(module, snapshot) if m.key in wanted]
        if args.list:
            for m in mutants:
                print(f"{m.key:45} {m.description}")
            return 0
        results = []
        for number, mutant in enumerate(mutants, 1):
            result = run_mutant(mutant, args.timeout, scratch, snapshot)
            results.append(result)
            print(f"[{number}/{len(mutants)}] {result['outcome']:8} {mutant.key:45} {mutant.description} "
                  f"({result['seconds']:.0f} s)", flush=True)
            if args.output:  # written as it goes: a long run interrupted keeps what it measured
                args.output.write_text(json.dumps({"seed": args.seed, "per_package": args.per_package,
                                                   "results": results, "summary": summarise(results)}, indent=1))
        print(json.dumps(summarise(results), indent=1))
        for r in results:
            if r["outcome"] == "survived":
                print(f"survived: {r['key']} {r['description']}")
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
