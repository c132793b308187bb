"""Tables of the finished cells of a `longtail compare` grid that is still running, or that is being
run in pieces (a compare over other seeds or methods in the same output replaces its comparison
files with its own grid's).

    python tools/partial_tables.py GRID OUT [--config FILE | --recipe NAME] --methods bs,ccar_bs,... \\
        --seeds 0,1,2 [--reference bs] [override ...]

GRID is the compare's ``--output``; ``--config`` or ``--recipe``, ``--methods``, ``--seeds`` and the
overrides are the whole grid's, as compare would be called for it. OUT receives what compare writes
for a partial grid (``comparison.md`` / ``.csv`` / ``.json`` marked as partial, the per-class plots: the same
``write_comparison``), over the cells that have a ``metrics.json``, and ``<cell>.md``, each finished
cell's test / train table and its per-class table. The finished cells' metrics, class counts and
configs are copied into OUT/cells, so the grid's own folders are only read, and OUT/plan.json lists
the whole grid as compare's would, so ``tools/paired_deltas.py OUT ...`` pairs every finished seed
(the grid's own plan.json is the last compare call's, which may have named other seeds).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", type=Path, help="the compare's --output")
    parser.add_argument("output", type=Path, help="where the partial tables are written (created)")
    parser.add_argument("--config", help="the grid's config file, if it has one")
    parser.add_argument("--recipe", help="the grid's recipe, if it has one")
    parser.add_argument("--methods", required=True, help="the whole grid's methods, as given to compare")
    parser.add_argument("--seeds", required=True, help="the whole grid's seeds, as given to compare")
    parser.add_argument("--reference", help="method the deltas are measured against (default: the first)")
    parser.add_argument("overrides", nargs="*", help="the grid's key=value overrides")
    args = parser.parse_intermixed_args()  # overrides may follow the options

    from longtail.engine.compare import plan_cells, write_comparison, write_plan
    from longtail.engine.errors import ConfigError
    from longtail.report.tables import per_class_table, results_table

    plan = argparse.Namespace(recipe=args.recipe, config=args.config, methods=args.methods, seeds=args.seeds,
                              imbalance_factors=None, paired=True, output=str(args.output),
                              overrides=args.overrides)
    try:
        cells, _ = plan_cells(plan)
    except ConfigError as error:  # a method, seed list, config or override compare would refuse too
        parser.error(str(error))
    done = [c for c in cells if (args.grid / "cells" / c.name / "metrics.json").is_file()]
    if not done:
        raise SystemExit(f"{args.grid}: none of the grid's {len(cells)} cells has finished (no cells/<cell>/metrics.json)")
    reference = args.reference or cells[0].method
    if all(c.method != reference for c in done):
        raise SystemExit(f"the reference {reference} has no finished cell yet: name another with --reference")
    shutil.rmtree(args.output / "cells", ignore_errors=True)  # this tool's own copies from an earlier call
    for cell in done:
        source, target = args.grid / "cells" / cell.name, args.output / "cells" / cell.name
        target.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.json", "class_counts.json", "config.yaml"):
            shutil.copy(source / name, target / name)
        metrics = json.loads((source / "metrics.json").read_text())
        (args.output / f"{cell.name}.md").write_text(
            results_table(metrics) + "\n\n" + per_class_table(metrics, max_classes=50) + "\n")
    write_plan(args.output, cells, reference, paired=True)
    write_comparison(args.output, cells, reference, partial=True)
    print(f"{len(done)} of {len(cells)} cells finished: {', '.join(c.name for c in done)}")
    print(f"written: {args.output}/comparison.md, .csv, .json, plots, <cell>.md")


if __name__ == "__main__":
    main()
