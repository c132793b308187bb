"""Inference from a run directory alone: the model, its preprocessing and class names, predictions
on new image files, the post-hoc adjustment `longtail posthoc` chose, and export.

A run directory is self-contained for inference: ``checkpoints/last.pt`` holds the config (model
name, head, options), the class names, the input channels and the reported weights (validation
selected when the run selected); ``preprocessing.json`` holds how images become model input. The
training data is never read, so it may be gone.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from longtail.data.datasets.listfile import IMAGE_EXTENSIONS

POSTHOC_METHODS = ("tau_norm", "logit_adjust", "ncm", "temperature")
# Post-hoc methods that rescale the model's own logits (the others replace its classifier).
LOGIT_POSTHOC = ("logit_adjust", "temperature")


class InferenceError(ValueError):
    """A run directory, post-hoc file or image that inference cannot use (a usage error)."""


# --------------------------------------------------------------------------- preprocessing


def load_preprocessing(run_dir: Path):
    """The ``longtail.data.Preprocessing`` a run wrote to ``preprocessing.json``."""
    from longtail.data import Preprocessing

    path = Path(run_dir) / "preprocessing.json"
    if not path.is_file():
        raise InferenceError(f"{run_dir} has no preprocessing.json (the run was made by an older longtail); "
                             f"train it again to predict or export from it")
    try:
        return Preprocessing.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise InferenceError(f"{path} is not a valid preprocessing file: {error}") from None


# --------------------------------------------------------------------------- the loaded run


@dataclass
class PostHoc:
    """A post-hoc classifier chosen by ``longtail posthoc`` (its posthoc_<method>.json)."""

    method: str
    tau: Optional[float]
    source: str
    class_means: Optional[torch.Tensor] = None  # NCM only

    def describe(self) -> str:
        name = "T" if self.method == "temperature" else "tau"
        return self.method + ("" if self.tau is None else f" ({name}={self.tau:g})")


@dataclass
class LoadedRun:
    """A trained model ready for inference: ``model`` (eval mode), ``preprocess`` (images -> model
    input), ``classes`` (names, label order: an image folder's classes.tsv display names),
    ``folders`` (an image folder's class folder names, label order; else the class names), and
    :meth:`predict`."""

    model: nn.Module
    preprocess: object
    classes: list
    class_counts: list
    device: torch.device
    run_dir: Path
    config: object
    weights: str  # which weights: "epoch N of M (chosen on val/...)" or "last epoch (M)"
    posthoc: Optional[PostHoc] = None
    _head: Optional[nn.Module] = field(default=None, repr=False)
    folders: Optional[list] = None

    def __post_init__(self):
        if self.folders is None:
            self.folders = list(self.classes)

    @torch.no_grad()
    def logits(self, images: Sequence, batch_size: int = 64) -> torch.Tensor:
        """Logits (N, K) in float32 of decoded images (PIL images or uint8 (C, H, W) tensors),
        with the post-hoc adjustment of :meth:`with_posthoc` when one is set."""
        outputs = []
        for start in range(0, len(images), batch_size):
            outputs.append(self.classify(self.preprocess(list(images[start:start + batch_size]))))
        if not outputs:
            return torch.zeros(0, len(self.classes))
        return torch.cat(outputs)

    @torch.no_grad()
    def classify(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (N, K), float32 on the CPU, of an already preprocessed batch (N, C, H, W). Raises
        InferenceError, naming the cause, rather than return NaN / inf (they would become NaN
        probabilities)."""
        batch = batch.to(self.device)
        logits = self._classify(batch).float().cpu()
        bad = int((~torch.isfinite(logits).all(dim=1)).sum())
        if bad:
            model_bad = self.posthoc is None or not bool(torch.isfinite(self.model(batch).float()).all())
            cause = ("the model's weights give NaN / inf logits: they diverged in training (see its history.jsonl); "
                     "retrain with a lower optim.lr" if model_bad else
                     f"the model's logits are finite but the post-hoc {self.posthoc.describe()} from "
                     f"{self.posthoc.source} makes them NaN / inf; choose it again with `longtail posthoc`")
            raise InferenceError(f"{bad} of {len(logits)} image(s) get non-finite logits from {self.run_dir}: {cause}")
        return logits

    def _classify(self, batch: torch.Tensor) -> torch.Tensor:
        if self.posthoc is None:
            return self.model(batch)
        from longtail.losses import post_hoc_adjust

        if self.posthoc.method == "logit_adjust":
            return post_hoc_adjust(self.model(batch), self.class_counts, self.posthoc.tau)
        if self.posthoc.method == "temperature":
            return self.model(batch) / self.posthoc.tau
        return self._head(self.model.features(batch))

    def probabilities(self, images: Sequence, batch_size: int = 64) -> torch.Tensor:
        """Softmax of :meth:`logits` (N, K). With NCM these are a softmax of cosines (see posthoc)."""
        return self.logits(images, batch_size).softmax(dim=1)

    def predict(self, images: Sequence, top_k: int = 5, batch_size: int = 64) -> list:
        """One dict per image: ``{"prediction": name, "probability": p, "top_k": [(name, p), ...]}``."""
        return self.rank(self.probabilities(images, batch_size), top_k)

    def rank(self, probabilities: torch.Tensor, top_k: int = 5) -> list:
        """:meth:`predict`'s dicts from probabilities (N, K)."""
        k = min(top_k, len(self.classes))
        values, indices = probabilities.topk(k, dim=1)
        results = []
        for row_values, row_indices in zip(values.tolist(), indices.tolist()):
            ranked = [(self.classes[j], p) for j, p in zip(row_indices, row_values)]
            results.append({"prediction": ranked[0][0], "probability": ranked[0][1], "top_k": ranked})
        return results

    def with_tta(self, mode: str) -> "LoadedRun":
        """This run predicting the mean logits over test-time augmented views (:class:`~longtail.models.tta.TTAModel`)."""
        from longtail.models.tta import TTAModel

        if mode == "none":
            return self
        if self.posthoc is not None and self.posthoc.method not in LOGIT_POSTHOC:
            raise InferenceError(f"test-time augmentation averages the model's logits; the post-hoc "
                                 f"{self.posthoc.method} classifier replaces them. Use one or the other")
        self.model = TTAModel(self.model, mode).eval()
        return self

    def with_posthoc(self, posthoc: Optional[PostHoc]) -> "LoadedRun":
        """This run with a post-hoc classifier applied to every later prediction (None removes it)."""
        from longtail.models.heads import LinearHead, NCMHead, tau_normalized_head

        self.posthoc, self._head = posthoc, None
        if posthoc is None or posthoc.method in LOGIT_POSTHOC:
            return self
        if posthoc.method == "tau_norm":
            if not isinstance(self.model.head, LinearHead):
                raise InferenceError(f"tau_norm rescales a linear classifier; this run's head is "
                                     f"{type(self.model.head).__name__}")
            self._head = tau_normalized_head(self.model.head, posthoc.tau)
        else:
            self._head = NCMHead(posthoc.class_means.to(self.device), metric="cosine")
        return self


def _weights_description(state: dict) -> str:
    epochs = state["config"]["optim"]["epochs"]
    best = state.get("best")
    if state.get("best_model") is not None and best:
        return f"epoch {best['epoch'] + 1} of {epochs} (chosen on {best['metric']} = {100 * best['value']:.2f}%)"
    return f"last epoch ({state['epoch']} of {epochs})"


def load_run(run_dir, device: str = "cpu", posthoc: Optional[str] = None) -> LoadedRun:
    """Load a run directory for inference, without its training data.

    Returns a :class:`LoadedRun`: ``.model`` (eval mode, the weights the run's metrics.json
    reports), ``.preprocess`` (a ``longtail.data.Preprocessing``: decoded images -> normalised
    batch), ``.classes`` (class names in label order) and ``.predict(images)``. ``posthoc``: a
    method name (reads RUN/posthoc_<method>.json) or the path of such a file.
    """
    from longtail.engine.rundir.checkpoint import (CheckpointError, load_model_weights, load_run_checkpoint,
                                                  reported_weights, run_checkpoint)
    from longtail.engine.training.components import build_model
    from longtail.engine.config import ConfigError, config_from_dict
    from longtail.engine.runtime.distributed import select_device

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InferenceError(f"{run_dir} is not a run directory (runs/<run>, holding checkpoints/last.pt)")
    try:
        state = load_run_checkpoint(run_checkpoint(run_dir))  # refuses a torch file that is not a run's
        config = config_from_dict(state["config"])
        classes = list(state["classes"])
        # The checkpoint holds every weight: the pretrained file of a fine-tuned run is not needed (or read).
        config.model.pretrained = None
        torch_device = select_device(device)
        model = build_model(config, len(classes), int(state["in_channels"]), torch_device)
        load_model_weights(model, reported_weights(state), run_checkpoint(run_dir))
    except (CheckpointError, ConfigError) as error:
        raise InferenceError(str(error)) from None
    model.eval()
    loaded = LoadedRun(model, load_preprocessing(run_dir), classes, list(state["class_counts"]), torch_device,
                       run_dir, config, _weights_description(state), folders=state.get("folders"))
    if posthoc is not None:
        loaded.with_posthoc(read_posthoc(run_dir, posthoc, state["class_counts_hash"]))
    return loaded


def read_posthoc(run_dir: Path, file_or_method: str, class_counts_hash: Optional[str] = None) -> PostHoc:
    """The post-hoc classifier in ``file_or_method``: a method name (RUN/posthoc_<method>.json) or a path."""
    from longtail.engine.rundir.checkpoint import CheckpointError, load_checkpoint

    run_dir = Path(run_dir)
    path = run_dir / f"posthoc_{file_or_method}.json" if file_or_method in POSTHOC_METHODS else Path(file_or_method)
    if not path.is_file():
        method = file_or_method if file_or_method in POSTHOC_METHODS else "|".join(POSTHOC_METHODS)
        raise InferenceError(f"no post-hoc file {path}; choose one first with `longtail posthoc {run_dir} "
                             f"--method {method}` (or give --posthoc a method name or a posthoc_<method>.json)")
    try:
        result = json.loads(path.read_text())
        method, tau = result["method"], result.get("tau")
    except (ValueError, KeyError, TypeError) as error:
        raise InferenceError(f"{path} is not a posthoc_<method>.json written by `longtail posthoc` ({error})") from None
    if method not in POSTHOC_METHODS:
        raise InferenceError(f"{path}: unknown post-hoc method {method!r}")
    if class_counts_hash is not None and result.get("class_counts_hash") not in (None, class_counts_hash):
        raise InferenceError(f"{path} was made for a run trained on different data than {run_dir}")
    if method != "ncm":
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau):
            raise InferenceError(f"{path}: {method} needs a finite numeric tau, found {tau!r}; choose it again "
                                 f"with `longtail posthoc {run_dir} --method {method}`")
        if method == "temperature" and not tau > 0:
            raise InferenceError(f"{path}: a temperature must be positive, found {tau!r}; choose it again with "
                                 f"`longtail posthoc {run_dir} --method temperature`")
        return PostHoc(method, float(tau), str(path))
    means_path = path.with_suffix(".pt")
    if not means_path.is_file():
        raise InferenceError(f"NCM classifies by the training-set class means, stored beside the result as "
                             f"{means_path.name}, which is missing; run `longtail posthoc {run_dir} --method ncm` again")
    try:
        means = load_checkpoint(means_path)["class_means"]
    except (CheckpointError, KeyError, TypeError) as error:
        raise InferenceError(f"{means_path}: {error}") from None
    if not isinstance(means, torch.Tensor) or not bool(torch.isfinite(means).all()):
        raise InferenceError(f"{means_path}: the class means are not a finite tensor; run `longtail posthoc "
                             f"{run_dir} --method ncm` again")
    return PostHoc("ncm", None, str(path), means.float())


# --------------------------------------------------------------------------- image files


def find_images(paths: Sequence) -> list:
    """Image files named by ``paths``: files as given, folders searched recursively (sorted, hidden
    entries skipped, by extension). Raises InferenceError for a path that does not exist."""
    suffixes = tuple(IMAGE_EXTENSIONS)
    found, missing = [], []
    for given in paths:
        path = Path(given)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            inside = []
            for directory, subdirs, files in os.walk(path):
                subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
                inside += [Path(directory) / f for f in files
                           if not f.startswith(".") and f.lower().endswith(suffixes)]
            found += sorted(inside)
        else:
            missing.append(str(path))
    if missing:
        raise InferenceError(f"not found: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    return found


def read_image(path: Path):
    """The decoded image (PIL, loaded into memory), or raises OSError / ValueError if unreadable."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.copy()


def file_logits(loaded: LoadedRun, files: Sequence[Path], batch_size: int = 64):
    """(paths, logits, unusable): the usable files, their logits (N, K) float32 on the CPU, and a
    list of ``(path, reason)`` for the files that could not be decoded or preprocessed (e.g. a size
    the model does not take: a native-size run refuses to resize behind the user's back)."""
    paths, outputs, unreadable = [], [], []
    for start in range(0, len(files), batch_size):
        inputs = []
        for path in files[start:start + batch_size]:
            try:
                image = read_image(path)
            except Exception as error:  # PIL raises several types (UnidentifiedImageError, OSError, ...)
                unreadable.append((str(path), f"cannot be decoded ({type(error).__name__}: {error})"))
                continue
            try:  # one at a time, so a wrong size is reported with its file
                inputs.append(loaded.preprocess(image))
                paths.append(path)
            except ValueError as error:
                unreadable.append((str(path), str(error)))
        if inputs:
            outputs.append(loaded.classify(torch.stack(inputs)))
    logits = torch.cat(outputs) if outputs else torch.zeros(0, len(loaded.classes))
    return paths, logits, unreadable


def predict_files(loaded: LoadedRun, files: Sequence[Path], top_k: int = 5, batch_size: int = 64, adjust=None):
    """(predictions, unusable): one dict per usable file (``path`` added), and the ``(path, reason)``
    of the files :func:`file_logits` could not use. ``adjust``: a function of the logits of all
    usable files together (N, K) -> (N, K), applied before the softmax (prior adaptation: EM needs
    every image's output at once)."""
    paths, logits, unreadable = file_logits(loaded, files, batch_size)
    if adjust is not None and len(paths):
        logits = adjust(logits)
    ranked = loaded.rank(logits.softmax(dim=1), top_k) if len(paths) else []
    return [{"path": str(path), **result} for path, result in zip(paths, ranked)], unreadable


# --------------------------------------------------------------------------- export


def export_run(loaded: LoadedRun, fmt: str, output: Path) -> Path:
    """Write the model (the weights the run reports) as TorchScript or ONNX to ``output``, and its
    inference metadata (class names, preprocessing, input shape) to ``output`` + ``.json``."""
    from longtail.engine.rundir.checkpoint import atomic_write_json

    if fmt not in ("torchscript", "onnx"):
        raise InferenceError(f"unknown export format {fmt!r}; choose torchscript or onnx")
    size = (loaded.preprocess.channels, *loaded.preprocess.size)
    example = torch.zeros(1, *size, device=loaded.device)
    # LoRA adapters folded into their base layers (same function, the base architecture's plain layers);
    # on a copy, so the loaded run keeps its adapters. AdaptFormer adapters are ordinary layers and stay.
    import copy

    from longtail.models.finetune import merge_adapters

    model = merge_adapters(copy.deepcopy(loaded.model)).eval()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(f".{output.name}.tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch flags TorchScript and parts of its own exporter as deprecated; the user chose the format.
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
            if fmt == "torchscript":
                traced = torch.jit.trace(model, example, check_trace=False)
                traced.save(str(temporary))
            else:
                # torch.export-based exporter (onnxscript); batch size left free; the weights inside the
                # one file (external_data=False), so the model is a single file to copy.
                torch.onnx.export(model, (example.expand(2, *size),), str(temporary), input_names=["images"],
                                  output_names=["logits"], dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
                                  dynamo=True, external_data=False, verbose=False)
        os.replace(temporary, output)
    finally:
        if temporary.exists():
            temporary.unlink()
    metadata = {
        "format": fmt,
        "run": str(loaded.run_dir),
        "weights": loaded.weights,
        "input": {"name": "images", "shape": ["batch", *size], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch", len(loaded.classes)],
                   "note": "raw logits; softmax gives probabilities (no post-hoc adjustment applied)"},
        "classes": loaded.classes,
        "preprocessing": loaded.preprocess.to_dict(),
    }
    atomic_write_json(Path(str(output) + ".json"), metadata)
    return output


# --------------------------------------------------------------------------- scoring another folder


def evaluate_data_root(loaded: LoadedRun, data_root, split: str = "test", batch_size: int = 64) -> tuple[dict, list]:
    """Score ``loaded`` on another copy of its kind of data: ``data_root`` laid out like the
    training data (an image folder: DIR/<split>/<class>/* or DIR/<class>/*; other datasets: their
    own files under DIR). Returns (metrics, notes). Class folders the run does not know are refused;
    classes without images are noted (their accuracy is then undefined, left out of the means)."""
    from longtail.data import build_dataset
    from longtail.metrics import LongTailMetrics

    root = Path(data_root)
    classes = loaded.classes
    notes = []
    if not root.is_dir():
        raise InferenceError(f"--data-root {root} is not a folder")
    if loaded.config.data.name == "imagefolder":
        from longtail.data.datasets.imagefolder import ImageFolderDataset

        folder = root / split if (root / split).is_dir() else root
        found = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
        found = [c for c in found if c not in ("train", "val", "test")] if folder == root else found
        # Folders are matched by folder name (the display names of classes.tsv are for people).
        folders = loaded.folders
        unknown = [c for c in found if c not in folders]
        if not found or unknown:
            what = (f"class folders the run was not trained on: {unknown[:20]}" if unknown
                    else "no class folders")
            raise InferenceError(f"{folder} has {what}. Lay it out as {root}/{split}/<class>/<images> with the "
                                 f"run's class folders: {', '.join(folders[:20])}{' ...' if len(folders) > 20 else ''}")
        missing = [classes[j] for j, c in enumerate(folders) if c not in found]
        if missing:
            notes.append(f"{len(missing)} of the run's {len(classes)} classes have no folder here "
                         f"({', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}): not scored")
        dataset = ImageFolderDataset(folder, classes=found, names_file=None)
        index = {name: position for position, name in enumerate(folders)}
        labels = torch.tensor([index[found[label]] for label in dataset.labels.tolist()], dtype=torch.int64)

        def images(start, stop):
            batch = []
            for path in dataset.paths[start:stop]:
                try:
                    batch.append(read_image(Path(path)))
                except Exception as error:
                    raise InferenceError(f"cannot decode {path}: {type(error).__name__}: {error}") from None
            return batch
        count = len(dataset)
        notes.insert(0, f"scored {count} images of {folder}")
    else:
        try:
            dataset = build_dataset(loaded.config.data.name, split, root=str(root))
        except (ValueError, FileNotFoundError) as error:
            raise InferenceError(str(error)) from None
        if list(dataset.classes) != list(classes):
            raise InferenceError(f"{root}: its classes {list(dataset.classes)[:10]} differ from the run's "
                                 f"{classes[:10]}")
        labels, count = dataset.labels, len(dataset)

        def images(start, stop):
            return list(dataset.images[start:stop])
        notes.insert(0, f"scored {count} images of {loaded.config.data.name} under {root} ({split})")
    metrics = LongTailMetrics(len(classes), loaded.class_counts)
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        metrics.update(loaded.logits(images(start, stop), batch_size), labels[start:stop])
    return metrics.compute(spectral_norm=True), notes
