#!/usr/bin/env python
"""Build src/longtail/data/builtin/fashion_mnist_lt.npz, the embedded ``fashion-mnist-lt``.

Fashion-MNIST train made long-tailed with the LDAM-DRW generator (IF 100, exp, seed 0; 14,886
images) + the full 10,000-image test set, from the standard idx files. The output is
byte-reproducible; the script prints the sha256 and index hash that
``longtail/data/builtin.py`` records (BUILTIN_SHA256 of the file, BUILTIN_CONTENT_SHA256 of the
arrays, BUILTIN_TRAIN_INDEX_HASH of the split) and fails if the content or split differs from the
recorded ones unless --update-constants is given. (A different zlib may compress differently:
then only the file sha256 differs, which the loader accepts via the content sha256.)

    python tools/build_builtin.py [--source DIR] [--output FILE] [--update-constants]

DIR defaults to ../shared/data/fashion-mnist next to the repository, or /usr/share/datasets/fashion-mnist
(the Debian package dataset-fashion-mnist) when that is absent.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from longtail.data import builtin  # noqa: E402
from longtail.data.splits.imbalance import index_hash  # noqa: E402

DEFAULT_SOURCES = [REPO.parent / "shared" / "data" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=None, help="folder with the Fashion-MNIST idx (.gz) files")
    parser.add_argument("--output", type=Path, default=builtin.BUILTIN_FILE, help="where to write the .npz")
    parser.add_argument(
        "--update-constants", action="store_true", help="rewrite the checksums recorded in longtail/data/builtin.py"
    )
    args = parser.parse_args(argv)
    source = args.source or next((d for d in DEFAULT_SOURCES if d.is_dir()), None)
    if source is None:
        parser.error(f"no Fashion-MNIST idx folder found in {[str(d) for d in DEFAULT_SOURCES]}; pass --source")
    arrays = builtin.build_builtin_arrays(source)
    counts = tuple(int((arrays["train_labels"] == c).sum()) for c in range(10))
    if counts != builtin.BUILTIN_TRAIN_COUNTS or len(arrays["test_labels"]) != builtin.BUILTIN_TEST_SIZE:
        print(f"unexpected counts {counts} / test {len(arrays['test_labels'])}: is {source} Fashion-MNIST?", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sha = builtin.write_builtin(args.output, arrays)
    split_hash = index_hash(arrays["train_source_indices"])
    content = builtin.content_sha256(arrays)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)")
    print(f"BUILTIN_SHA256 = {sha}")
    print(f"BUILTIN_CONTENT_SHA256 = {content}")
    print(f"BUILTIN_TRAIN_INDEX_HASH = {split_hash}")
    if args.update_constants:
        module = Path(builtin.__file__)
        text = module.read_text()
        text = re.sub(r'BUILTIN_SHA256 = "[^"]*"', f'BUILTIN_SHA256 = "{sha}"', text)
        text = re.sub(r'BUILTIN_CONTENT_SHA256 = "[^"]*"', f'BUILTIN_CONTENT_SHA256 = "{content}"', text)
        text = re.sub(r'BUILTIN_TRAIN_INDEX_HASH = "[^"]*"', f'BUILTIN_TRAIN_INDEX_HASH = "{split_hash}"', text)
        module.write_text(text)
        print(f"updated {module}")
    elif (content, split_hash) != (builtin.BUILTIN_CONTENT_SHA256, builtin.BUILTIN_TRAIN_INDEX_HASH):
        print("the data differ from the constants in longtail/data/builtin.py; rerun with --update-constants", file=sys.stderr)
        return 1
    elif sha != builtin.BUILTIN_SHA256:
        print("same data as recorded, compressed differently (another zlib); the loader accepts it via the content sha256")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
