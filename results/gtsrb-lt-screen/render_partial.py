"""Tables of the finished cells of the screen (compare writes its own only when the grid completes)."""
import json, shutil, sys
from argparse import Namespace
from pathlib import Path
from longtail.engine.compare import plan_cells, write_comparison
from longtail.report.tables import results_table, per_class_table

EVIDENCE = Path("/work/evidence/gtsrb-screen")
OUT = Path(sys.argv[1])
M = "ce,bs,ccar_bs,car_bs,ldam_drw,ccar_ce,ccar_bs:loss.weight_normalization=batch_mean,car_ccar_bs,concutmix,car_concutmix,crt,bs:data.autoaugment=true"
args = Namespace(recipe=None, config=str(EVIDENCE / "gtsrb-lt-r32-screen30.yaml"), methods=M, seeds="0,1,2",
                 imbalance_factors=None, paired=True, output=str(OUT), overrides=["data.root=/tmp/gtsrb-data/gtsrb-32"])
cells, _ = plan_cells(args)
done = [c for c in cells if (EVIDENCE / "cells" / c.name / "metrics.json").is_file()]
print("finished cells:", [c.name for c in done])
if done:
    for c in done:
        target = OUT / "cells" / c.name
        target.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.json", "class_counts.json", "config.yaml"):
            shutil.copy(EVIDENCE / "cells" / c.name / name, target / name)
    reference = "ce" if any(c.method == "ce" for c in done) else done[0].method
    write_comparison(OUT, cells, reference, partial=True)  # OUT/cells holds the finished cells only
    for c in done:
        metrics = json.loads((EVIDENCE / "cells" / c.name / "metrics.json").read_text())
        (OUT / f"{c.name}.md").write_text(results_table(metrics) + "\n\n" + per_class_table(metrics, max_classes=50) + "\n")
