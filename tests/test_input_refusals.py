"""Issue 21: inputs that cannot be meant are refused before any work (exit 2, a message naming what
is wrong and what to do), never trained on silently. Real image files written by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import image_run_overrides, write_image_folder
from longtail.cli import main


def test_a_test_class_folder_that_training_lacks_is_refused(tmp_path, capsys):
    root = tmp_path / "data"
    write_image_folder(root, [6, 6], split="train")
    write_image_folder(root, [3, 3, 3], split="test")  # c2 exists only in test/
    output = tmp_path / "runs"
    assert main(["train", *image_run_overrides(root, output)]) == 2
    error = capsys.readouterr().err
    assert f"{root / 'test'} has class folders that {root / 'train'} does not: ['c2']" in error
    assert "left out of every metric" in error and not output.exists()
