"""Image files before training: find every bad file up front, learn sizes / colour, decode into memory.

``scan_images`` opens every file's header (PIL reads only the header until pixels are asked for)
and checks that JPEG / PNG files end with their end marker, which catches empty, non-image and
truncated files in a fraction of a decode's time; ``decode=True`` also decodes every image fully
(slower, catches corruption inside the compressed data too). All problems are collected
and reported together (``BadImagesError``), never one per attempt, and never mid-training.

``decode_images`` reads a list of files into one uint8 (N, C, H, W) tensor through a
:class:`~longtail.data.transforms.preprocess.Preprocessing` (colour + geometry), so images decoded into
memory are exactly what the per-image file pipeline would give.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import torch

__all__ = ["BadImagesError", "ImageScan", "decode_images", "scan_images"]

_MAX_REPORTED = 20
# PIL modes without colour; a folder of only these is trained as 1-channel images.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_TRAILERS = {"JPEG": (b"\xff\xd9", 4096), "PNG": (b"IEND", 64)}  # end marker, how far from the end it may lie


class BadImagesError(ValueError):
    """Image files that cannot be used; ``problems`` lists ``(path, reason)`` for every one."""

    def __init__(self, problems: Sequence[tuple[str, str]], remedy: str):
        self.problems = list(problems)
        shown = "\n  ".join(f"{path}: {reason}" for path, reason in self.problems[:_MAX_REPORTED])
        more = f"\n  ... and {len(self.problems) - _MAX_REPORTED} more" if len(self.problems) > _MAX_REPORTED else ""
        super().__init__(f"{len(self.problems)} image file(s) cannot be read:\n  {shown}{more}\n{remedy}")


@dataclass
class ImageScan:
    """What a scan found: per file ``sizes[i]`` = (height, width) and ``modes[i]`` (None for bad files)."""

    paths: list
    sizes: list
    modes: list
    problems: list = field(default_factory=list)  # (path, reason)

    def select(self, positions: Sequence[int]) -> "ImageScan":
        """The scan of the files at ``positions`` only."""
        pick = lambda values: [values[i] for i in positions]  # noqa: E731
        chosen = set(pick(self.paths))
        return ImageScan(pick(self.paths), pick(self.sizes), pick(self.modes),
                         [p for p in self.problems if p[0] in chosen])

    @property
    def bad_positions(self) -> list[int]:
        return [i for i, size in enumerate(self.sizes) if size is None]

    @property
    def good_positions(self) -> list[int]:
        return [i for i, size in enumerate(self.sizes) if size is not None]

    def size_counts(self) -> Counter:
        return Counter(size for size in self.sizes if size is not None)

    @property
    def all_grey(self) -> bool:
        modes = [mode for mode in self.modes if mode is not None]
        return bool(modes) and all(mode in GREY_MODES for mode in modes)


def _check_one(path: str, decode: bool) -> tuple:
    """(size, mode, None) or (None, None, reason)."""
    from PIL import Image, UnidentifiedImageError

    try:
        length = os.path.getsize(path)
    except OSError as error:
        return None, None, f"cannot be read ({error.strerror or error})"
    if length == 0:
        return None, None, "empty file (0 bytes)"
    try:
        with open(path, "rb") as stream:
            with Image.open(stream) as image:
                width, height = image.size
                mode, kind = image.mode, image.format
                if kind in _TRAILERS:
                    marker, window = _TRAILERS[kind]
                    stream.seek(max(0, length - window))
                    if marker not in stream.read():
                        return None, None, f"truncated {kind} (no end-of-image marker)"
                    stream.seek(0)
                if decode:
                    image.load()
    except UnidentifiedImageError:
        return None, None, "not an image file PIL can read"
    except Image.DecompressionBombError as error:
        return None, None, f"refused as a decompression bomb ({error})"
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        return None, None, f"corrupt image ({type(error).__name__}: {error})"
    if width < 1 or height < 1:
        return None, None, f"image has no pixels ({width}x{height})"
    return (height, width), mode, None


def scan_images(paths: Sequence[str], decode: bool = False, threads: int = 1) -> ImageScan:
    """Check every file (header + end marker, or a full decode); never raises for a bad file."""
    paths = list(paths)
    threads = max(1, int(threads))
    if threads == 1:
        results = [_check_one(path, decode) for path in paths]
    else:
        with ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while decoding
            results = list(pool.map(lambda path: _check_one(path, decode), paths, chunksize=256))
    scan = ImageScan(paths, [r[0] for r in results], [r[1] for r in results])
    scan.problems = [(path, r[2]) for path, r in zip(paths, results) if r[2] is not None]
    return scan


def decode_images(paths: Sequence[str], preprocessing, threads: int = 1) -> torch.Tensor:
    """Decode ``paths`` into uint8 (N, C, *preprocessing.size) through ``preprocessing.prepare``.

    Raises ``BadImagesError`` naming every file that fails to decode (after trying all of them).
    """
    from PIL import Image

    from longtail.data.transforms.convert import COLORS, to_uint8_image

    paths = list(paths)
    out = torch.empty((len(paths), COLORS[preprocessing.color], *preprocessing.size), dtype=torch.uint8)
    problems: list[tuple[str, str]] = []

    def one(position: int) -> None:
        path = paths[position]
        try:
            with Image.open(path) as image:
                pixels = to_uint8_image(image, preprocessing.color)
            out[position] = preprocessing.prepare(pixels.unsqueeze(0))[0]
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            problems.append((path, f"cannot be decoded ({type(error).__name__}: {error})"))

    threads = max(1, int(threads))
    if threads == 1:
        for position in range(len(paths)):
            one(position)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(len(paths)), chunksize=256))
    if problems:
        raise BadImagesError(sorted(problems), "Remove or replace these files, or set data.bad_images=skip to "
                             "train without them (the skipped files are recorded in the run directory).")
    return out
