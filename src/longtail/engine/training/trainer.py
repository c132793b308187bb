"""The training loop: one run from a RunConfig to a self-describing run directory.

Resumability is by construction: a training epoch's sample order, augmentation and mixing depend
only on ``(seed, epoch, batch index)``, and a checkpoint holds every other piece of state (model,
optimizer, grad scaler, loss schedule, CAR's EMA confusion and singular vectors, RNG states,
position). Resuming from a checkpoint therefore replays the remaining steps bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from longtail.engine.rundir import checkpoint as ckpt
from longtail.engine.methods import StepContext, plan_for
from longtail.engine.training.components import (build_loss_fn, build_model, build_optimizer, build_regularizer,
                                                 init_from_run)
from longtail.engine.config import ConfigError, RunConfig, config_from_dict, dataset_title, dump_yaml
from longtail.engine.training.data_setup import DataBundle, build_data
from longtail.engine.runtime.distributed import broadcast_object, init_distributed, shutdown
from longtail.engine.rundir import fingerprint as data_fp
from longtail.engine.rundir import lock as run_lock
from longtail.engine.rundir.runinfo import check_output_dir, create_run_dir, environment_info
from longtail.engine.training.schedules import learning_rate
from longtail.engine.training.scoring import NonFiniteOutputError, evaluate_loader, name_classes, spectral_norm_weighting
from longtail.engine.runtime.compilation import compile_cost_seconds, compile_pays, use_shared_cache
from longtail.engine.runtime.precision import autocast_context, resolve_precision
from longtail.models.finetune import parameter_counts



PROBE_IMAGES = 32  # evaluation images whose logits must be finite before a checkpoint is written


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN / inf logits, loss, parameters or batch-norm statistics); the last good
    checkpoint is left untouched and the message says which one it is."""


class TrainingInterrupted(SystemExit):
    """SIGINT / SIGTERM arrived; a checkpoint was saved and the process exits."""


@dataclass
class TrainState:
    epoch: int = 0          # epoch to run next (or being run)
    batch: int = 0          # next batch index inside ``epoch``
    global_step: int = 0
    history: list = field(default_factory=list)
    best: Optional[dict] = None  # train.select_on: {"epoch", "metric", "value"} of the best epoch so far
    # Running sums of the epoch in progress ({"seen", "seconds", term: sum of value * batch size}),
    # kept in a mid-epoch checkpoint so the resumed epoch's history line covers the whole epoch.
    epoch_sums: dict = field(default_factory=dict)
    # model.compile=auto: the decision taken after the first epoch (None: not taken yet), kept in the
    # checkpoint so that a resumed run computes exactly what the uninterrupted one did.
    compiled: Optional[bool] = None


class _StopFlag:
    """Turns SIGINT / SIGTERM into a request the loop honours at the next step boundary."""

    def __init__(self):
        self.signal_number: Optional[int] = None
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not in the main thread (e.g. called from a library); no handler
                pass
        return self

    def _handle(self, signum, _frame):
        if self.signal_number is not None:  # second signal: the user insists
            raise KeyboardInterrupt
        self.signal_number = signum
        print(f"\nreceived signal {signum}: finishing this step, saving a checkpoint, then exiting "
              f"(send it again to abort without saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)  # torch.compile wrapper


class Trainer:
    """Builds every component from a config and runs training + final evaluation."""

    def __init__(self, config: RunConfig, label: str, resume_dir: Optional[Path] = None):
        self._lock: Optional[int] = None  # the run directory's lock (engine.rundir.lock), held until close()
        try:
            self._build(config, label, resume_dir)
        except BaseException:
            run_lock.release(self._lock)  # a trainer that failed to start holds nothing
            raise

    def _build(self, config: RunConfig, label: str, resume_dir: Optional[Path]) -> None:
        self.config = config
        self.label = label
        self.method = plan_for(config)
        if self.method.stage.requires_init_from and not config.model.init_from:
            # Checked here, not in the config: `--print-config` / `recipes --show` of crt / lws must work.
            raise ConfigError(f"model.decoupled={config.model.decoupled} re-trains the classifier of a trained "
                              f"model; set model.init_from=RUN_DIR (a finished run on the same data)")
        if resume_dir is None:
            check_output_dir(config.train.output_dir)  # before any data is read
        self.last_saved: Optional[str] = None  # where the last checkpoint written or loaded stands
        self.context, self.device = init_distributed(config.train.device)
        if resume_dir is not None and self.context.is_main:  # before any work: a second --resume is refused
            self._lock = run_lock.acquire(Path(resume_dir) / run_lock.LOCK_NAME, f"the run {resume_dir}")
        # train.precision=auto resolved once for this device; the run directory records the choice.
        self.precision = resolve_precision(config.train.precision, self.device)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        if config.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            # Deterministic mode also fills every new tensor with NaN (a guard against reading
            # uninitialised memory): 12 % of a CPU step (BENCHMARKS.md, issue 20). The engine never
            # reads memory it did not write, and the exact-resume tests show equal results without it.
            torch.utils.deterministic.fill_uninitialized_memory = False
        seed_everything(config.train.seed)  # every rank builds the same initial model
        self.data: DataBundle = build_data(config, self.device, self.context)
        self.class_counts = self.data.class_counts
        self._derive_epochs_from_iterations()
        self.num_classes = len(self.class_counts)
        self.model = build_model(config, self.num_classes, self.data.in_channels, self.device)
        report = getattr(self.model, "pretrained_report", None)
        if report is not None and self.context.is_main:
            print(f"pretrained weights: {report}", flush=True)
        if config.model.init_from and resume_dir is None:  # a resumed run has its own weights
            report = init_from_run(self.model, config.model.init_from, self.class_counts,
                                   load_head=self.method.stage.init_loads_head, fingerprint=self.data.fingerprint)
            if self.context.is_main:
                print(report, flush=True)
        self.train_model = self.model
        if self.context.enabled:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if config.model.compile == "true":
            self._compile()
        trainable, total = parameter_counts(self.model)
        self.parameters = {"finetune": config.model.finetune, "trainable": trainable, "total": total}
        self._say(f"parameters: {trainable:,} of {total:,} trainable ({100.0 * trainable / max(total, 1):.2f}%), "
                  f"model.finetune={config.model.finetune}")
        # Classifier initialisation, cached features of a frozen backbone (engine/methods/finetuning.py).
        # A resumed run rebuilds the cache; its checkpoint then replaces any initialised weights.
        self.train_model, _ = self.method.before_training(self.model, self.train_model, self.data, config,
                                                          self.device, self.context, self._say)
        self.loss_fn = build_loss_fn(config, self.class_counts, self.device, rank=self.context.rank,
                                     head=self.model.head)
        self.regularizer = build_regularizer(config, self.class_counts, self.device)
        self.optimizer = build_optimizer(config, self.model)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.chosen == "fp16")
        self.state = TrainState()
        self.best_weights: Optional[dict] = None  # model weights of self.state.best (CPU copies)
        self._probe: Optional[torch.Tensor] = None  # the fixed evaluation batch of _output_finite
        self.run_dir = self._prepare_run_dir(resume_dir)  # a resumed run loads state and best_weights
        if config.model.compile == "auto" and self.state.compiled:
            self._compile()  # as the interrupted run did from its second epoch on
        self.writer = None
        self.confusions = {}

    def _say(self, message: str) -> None:
        if self.context.is_main:
            print(message, flush=True)

    # ------------------------------------------------------------------ run directory / state

    def _prepare_run_dir(self, resume_dir: Optional[Path]) -> Path:
        if resume_dir is not None:
            run_dir = Path(resume_dir)
            self._load(ckpt.run_checkpoint(run_dir), run_dir)
            return run_dir
        run_dir = None
        if self.context.is_main:
            run_dir = create_run_dir(self.config, self.label)
            self._lock = run_lock.acquire(run_dir / run_lock.LOCK_NAME, f"the run {run_dir}")
            ckpt.atomic_write_text(run_dir / "config.yaml", dump_yaml(self.config))
            ckpt.atomic_write_json(run_dir / "class_counts.json", {
                "classes": self.data.classes,
                **({"folders": self.data.folders} if self.data.folders is not None else {}),
                "train_counts": [int(c) for c in self.class_counts],
                "class_counts_hash": ckpt.class_counts_hash(self.class_counts),
                "split": self.data.split_info,
            })
            ckpt.atomic_write_json(run_dir / data_fp.FINGERPRINT_FILE, self.data.fingerprint)
            # Everything inference needs to turn new images into model input (longtail predict / load_run).
            ckpt.atomic_write_json(run_dir / "preprocessing.json", self.data.preprocessing.to_dict())
            environment = environment_info(self.device, self.context)
            environment["precision"] = self.precision.to_dict()
            environment["parameters"] = self.parameters
            ckpt.atomic_write_json(run_dir / "environment.json", environment)
        return Path(broadcast_object(str(run_dir) if run_dir else None, self.context))

    def _checkpoint_state(self) -> dict:
        return {
            "format": 1,
            "label": self.label,
            "config": self.config.to_dict(),
            "class_counts": [int(c) for c in self.class_counts],
            "class_counts_hash": ckpt.class_counts_hash(self.class_counts),
            "classes": list(self.data.classes),
            "folders": None if self.data.folders is None else list(self.data.folders),
            "in_channels": self.data.in_channels,
            "data_fingerprint": data_fp.summary(self.data.fingerprint),
            "epoch": self.state.epoch,
            "batch": self.state.batch,
            "global_step": self.state.global_step,
            "history": self.state.history,
            "epoch_sums": self.state.epoch_sums,
            "compiled": self.state.compiled,
            "model": unwrap(self.model).state_dict(),
            "best": self.state.best,
            "best_model": self.best_weights,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "regularizer": self.regularizer.state_dict() if self.regularizer is not None else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
        }

    def save(self) -> None:
        # A diverged model never replaces the last good checkpoint. Batch-norm running statistics are
        # checked too: they can overflow while the training loss (batch statistics) stays finite.
        self._check_model_finite()
        if self.context.is_main:
            ckpt.save_checkpoint(ckpt.run_checkpoint(self.run_dir), self._checkpoint_state())
        self.last_saved = self._position()

    def _position(self) -> str:
        if self.state.batch == 0:
            return f"after epoch {self.state.epoch}" if self.state.epoch else "before training"
        return f"epoch {self.state.epoch + 1}, after batch {self.state.batch}"

    def _intact(self) -> str:
        path = ckpt.run_checkpoint(self.run_dir) if getattr(self, "run_dir", None) else None
        if self.last_saved is None:
            return "no checkpoint had been written yet, so there is nothing to resume"
        return f"the last good checkpoint {path} ({self.last_saved}) is intact and was not overwritten"

    def _probe_batch(self) -> torch.Tensor:
        """A fixed small batch of evaluation images (the first of the val, else train, else test loader),
        read once. Reading it never touches the training RNG (a resumed run replays bit for bit)."""
        if self._probe is None:
            split = next(s for s in ("val", "train", "test") if s in self.data.eval_loaders)
            with torch.random.fork_rng(devices=[]):
                images, _ = next(iter(self.data.eval_loaders[split]))
            self._probe = images[:PROBE_IMAGES]
        return self._probe

    def _output_finite(self) -> bool:
        """Whether the model, as evaluation and inference run it (eval mode: batch-norm running
        statistics; the run's precision), gives finite logits on the probe batch. Finite weights are not
        enough: weights of 1e14 can be finite while their logits overflow. Collective under DDP."""
        model = unwrap(self.model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), autocast_context(self.device, self.precision.chosen):
                logits = model(self._probe_batch())
        finally:
            model.train(was_training)
        bad = (~torch.isfinite(logits.float())).any().float()
        if self.context.enabled:
            dist.all_reduce(bad)
        return bad.item() == 0

    def _check_model_finite(self) -> None:
        model = unwrap(self.model)
        output_finite = self._output_finite()  # first: a collective, every rank must reach it
        bad = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()]
               if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
        if not bad and not output_finite:
            raise NonFiniteLossError(
                f"the model diverged ({self._position()}): its weights are finite but its logits are not "
                f"(NaN / inf on a fixed batch of evaluation images, in eval mode at {self.precision.chosen}), so "
                f"it is unusable. Training stopped; {self._intact()}. Lower optim.lr, enable "
                f"optim.clip_grad_norm, or use train.precision=fp32.")
        if bad:
            raise NonFiniteLossError(
                f"the model diverged ({self._position()}): non-finite values in "
                f"{', '.join(bad[:5])}{' and more' if len(bad) > 5 else ''}. Training stopped; {self._intact()}. "
                f"Lower optim.lr, enable optim.clip_grad_norm, or use train.precision=fp32.")

    def _load(self, path: Path, run_dir: Optional[Path] = None) -> None:
        state = ckpt.load_run_checkpoint(path, map_location="cpu")
        note = data_fp.check_same_data(data_fp.read_recorded(run_dir, state), self.data.fingerprint,
                                       f"the run {run_dir or path}")
        if note and self.context.is_main:
            print(note, file=sys.stderr, flush=True)
        expected = ckpt.class_counts_hash(self.class_counts)
        if state.get("class_counts_hash") != expected:
            raise ckpt.CheckpointError(
                f"{path} was trained on different class counts than this config's dataset "
                f"(hash {state.get('class_counts_hash')} vs {expected}); it cannot be resumed here")
        position = (state.get("epoch"), state.get("batch"), state.get("global_step"))
        if not all(isinstance(n, int) and n >= 0 for n in position) or position[0] > self.config.optim.epochs \
                or position[1] > self.data.steps_per_epoch:  # == : stopped after an epoch's last batch
            raise ckpt.CheckpointError(
                f"{path} stands at epoch {position[0]}, batch {position[1]} (global step {position[2]}), which this "
                f"run does not have ({self.config.optim.epochs} epochs of {self.data.steps_per_epoch} batches); the "
                f"checkpoint was altered or belongs to another run")
        ckpt.load_model_weights(unwrap(self.model), state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.loss_fn.load_state_dict(state["loss"])
        if self.regularizer is not None and state.get("regularizer") is not None:
            self.regularizer.load_state_dict(state["regularizer"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.state = TrainState(state["epoch"], state["batch"], state["global_step"], list(state["history"]),
                                state.get("best"), dict(state.get("epoch_sums") or {}), state.get("compiled"))
        self.best_weights = state.get("best_model")
        self.last_saved = self._position()

    # ------------------------------------------------------------------ training

    def _compile(self) -> None:
        use_shared_cache()  # one warm cache for every cell of a compare and every resume
        self.train_model = torch.compile(self.train_model)

    def _decide_compile(self, record: dict) -> None:
        """model.compile=auto, after the first epoch trained in this run: compile when the remaining
        steps at the measured step time save more than the (conservatively assumed) compile cost.
        Rank 0 decides and every rank follows, so all processes run the same code."""
        if self.config.model.compile != "auto" or self.state.compiled is not None:
            return
        steps = self.data.steps_per_epoch
        total = self.config.optim.iterations or self.config.optim.epochs * steps
        remaining = max(0, total - self.state.global_step)
        seconds_per_step = record["seconds"] / max(1, self.state.batch or steps)
        decision = compile_pays(remaining, seconds_per_step, compile_cost_seconds(self.model))
        if self.context.enabled:
            decision = broadcast_object(decision, self.context)
        self.state.compiled = bool(decision)
        if self.state.compiled:
            if self.context.is_main:
                print(f"model.compile=auto: compiling ({remaining} steps left at {seconds_per_step * 1000:.0f} ms "
                      f"repay the compile time)", flush=True)
            self._compile()

    def _derive_epochs_from_iterations(self) -> None:
        """optim.iterations: the run lasts ceil(iterations / batches per epoch) epochs, the last cut short.
        Written into the config before anything reads optim.epochs (loss switch, history, config.yaml)."""
        optim = self.config.optim
        if optim.iterations is None:
            return
        epochs = math.ceil(optim.iterations / self.data.steps_per_epoch)
        if epochs != optim.epochs and self.context.is_main:
            print(f"optim.iterations={optim.iterations} at {self.data.steps_per_epoch} batches per epoch: "
                  f"{epochs} epochs (optim.epochs set to {epochs})", flush=True)
        optim.epochs = epochs

    def _lr(self, epoch_position: float) -> float:
        optim = self.config.optim
        total, warmup = optim.epochs, optim.warmup_epochs
        if optim.iterations is not None:  # iteration-based: the schedule spans exactly `iterations` batches
            total = optim.iterations / self.data.steps_per_epoch
        if optim.warmup_iterations is not None:
            warmup = optim.warmup_iterations / self.data.steps_per_epoch
        return learning_rate(optim.lr, epoch_position, total, optim.schedule, warmup,
                             tuple(optim.milestones), tuple(optim.milestone_factors), optim.min_lr,
                             optim.warmup_style, optim.warmup_start_lr)

    def _stop_requested(self, stop: _StopFlag) -> bool:
        """True on every rank as soon as any rank got a signal (ranks must stop at the same step)."""
        flag = stop.signal_number is not None
        if self.context.enabled:
            tensor = torch.tensor([float(flag)], device=self.device)
            dist.all_reduce(tensor)
            flag = bool(tensor.item() > 0)
        return flag

    def _loss_terms(self, logits: torch.Tensor, targets: torch.Tensor) -> dict:
        # Checked collectively first: the library refuses non-finite logits with a ValueError, and
        # under DDP every rank must take the same path through CAR's all-reduce. The parameters (as
        # left by the previous step) are checked in the same read: one fused norm, no extra sync.
        parameters = [p.detach() for p in self.model.parameters()]
        self._check_finite({"logits": logits.detach().sum(),
                            "parameter_norm": torch.stack(torch._foreach_norm(parameters)).sum()})
        terms = {"base_loss": self.loss_fn(logits, targets)}
        if self.regularizer is not None:
            terms["regularizer"] = self.regularizer(logits, targets)
        return terms

    def _check_finite(self, terms: dict) -> None:
        values = torch.stack([t.detach().float() for t in terms.values()])
        bad = (~torch.isfinite(values)).any().float()
        if self.context.enabled:
            dist.all_reduce(bad)
        if bad.item() > 0:
            described = ", ".join(f"{name}={value.item():.6g}" for name, value in zip(terms, values))
            raise NonFiniteLossError(
                f"training diverged at epoch {self.state.epoch + 1}, batch {self.state.batch + 1} (global step "
                f"{self.state.global_step}): {described}. Training stopped; {self._intact()}. Lower "
                f"optim.lr, enable optim.clip_grad_norm, or use train.precision=fp32 "
                f"(this run used {self.precision.chosen}).")

    def train_epoch(self, stop: _StopFlag) -> dict:
        config = self.config
        epoch = self.state.epoch
        loader = self.data.train_loader
        steps = self.data.steps_per_epoch
        loader.set_epoch(epoch, start_batch=self.state.batch)
        self.train_model.train()
        self.method.start_epoch(self.model, self.loss_fn, epoch)  # DRW switches, frozen parts back in eval
        step = StepContext(self.train_model, self.loss_fn, self.regularizer,
                           autocast=lambda: autocast_context(self.device, self.precision.chosen),
                           check_finite=self._check_finite, mix=self.data.mix, loss_terms=self._loss_terms)
        accumulation = config.optim.grad_accumulation
        # Summed on the device and read once per epoch: a per-step .item() would stall a GPU.
        # A resumed epoch continues the sums saved with its mid-epoch checkpoint (float64, so the
        # history line equals an uninterrupted run's).
        sums = self.state.epoch_sums if self.state.batch > 0 else {}
        totals = {name: torch.tensor(float(sums.get(name, 0.0)), dtype=torch.float64, device=self.device)
                  for name in ("loss", "base_loss", "regularizer")}
        totals.update({name: torch.tensor(float(value), dtype=torch.float64, device=self.device)
                       for name, value in sums.items() if name not in ("seen", "seconds")})
        seen, earlier_seconds, started = int(sums.get("seen", 0)), float(sums.get("seconds", 0.0)), time.perf_counter()
        seen_before = seen
        progress = self._progress(steps, initial=self.state.batch)
        for images, targets in loader:
            batch_index = self.state.batch
            lr = self._lr(epoch + batch_index / steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            last_batch = batch_index + 1 == steps or (
                config.optim.iterations is not None and self.state.global_step + 1 >= config.optim.iterations)
            boundary = (batch_index + 1) % accumulation == 0 or last_batch
            sync = contextlib.nullcontext() if boundary or not self.context.enabled else self.train_model.no_sync()
            with sync:
                terms = self.method.loss.training_step(step, images, targets, epoch, batch_index)
                self._check_finite(terms)
                loss = sum(terms.values())
                self.scaler.scale(loss / accumulation).backward()
            if boundary:
                if config.optim.clip_grad_norm:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), config.optim.clip_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
            batch_size = targets.shape[0]
            seen += batch_size
            totals["loss"] += loss.detach() * batch_size
            for name, value in terms.items():
                if name not in totals:
                    totals[name] = torch.zeros((), dtype=torch.float64, device=self.device)
                totals[name] += value.detach() * batch_size
            self.state.batch += 1
            self.state.global_step += 1
            if progress is not None:
                progress.update(1)
                if self.state.batch % 10 == 0 or self.state.batch == steps:
                    rate = (seen - seen_before) * self.context.world_size / max(time.perf_counter() - started, 1e-9)
                    progress.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.4g}", img_s=f"{rate:.0f}")
            if boundary and self._stop_requested(stop):
                self.state.epoch_sums = {"seen": seen, "seconds": earlier_seconds + time.perf_counter() - started,
                                         **{name: value.item() for name, value in totals.items()}}
                self.save()
                raise TrainingInterrupted(128 + (stop.signal_number or signal.SIGTERM))
            if config.optim.iterations is not None and self.state.global_step >= config.optim.iterations:
                break  # iteration-based length: the last epoch ends here
        if progress is not None:
            progress.close()
        elapsed = earlier_seconds + time.perf_counter() - started
        self.state.epoch_sums = {}
        record = {"epoch": epoch, "lr": self._lr(epoch + 1 - 1e-9),
                  "images_per_s": seen * self.context.world_size / max(elapsed, 1e-9), "seconds": elapsed}
        record.update({k: v.item() / max(seen, 1) for k, v in totals.items()})
        if self.regularizer is not None:
            record["spectral_norm"] = float(self.regularizer.spectral_norm)
        record.update(self.method.loss.epoch_statistics(self.loss_fn))
        return record

    def _progress(self, steps: int, initial: int):
        if not (self.config.train.progress and self.context.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=steps, initial=initial, desc=f"epoch {self.state.epoch + 1}/{self.config.optim.epochs}",
                    leave=False, dynamic_ncols=True, file=sys.stderr)

    def fit(self) -> dict:
        epochs = self.config.optim.epochs
        self._open_writer()
        try:
            with _StopFlag() as stop:
                while self.state.epoch < epochs:
                    record = self.train_epoch(stop)
                    self._decide_compile(record)
                    epoch = self.state.epoch
                    eval_every = self.config.train.eval_every
                    if eval_every and (epoch + 1) % eval_every == 0 and epoch + 1 < epochs:
                        record["test"] = self._summary(self.evaluate("test"))
                    if self.config.train.select_on != "final":
                        record["val"] = self._summary(self.evaluate("val"))
                        self._keep_if_best(epoch, record["val"])
                    self.state.history.append(record)
                    self.state.epoch += 1
                    self.state.batch = 0
                    # Checkpoint first: history.jsonl never shows an epoch the checkpoint has not got.
                    if (epoch + 1) % self.config.train.checkpoint_every == 0 or epoch + 1 == epochs:
                        self.save()
                    self._log_epoch(record)
                    if self._stop_requested(stop):
                        raise TrainingInterrupted(128 + (stop.signal_number or signal.SIGTERM))
            return self.finish()
        finally:
            if self.writer is not None:
                self.writer.close()

    # ------------------------------------------------------------------ evaluation & outputs

    def evaluate(self, split: str, spectral_norm: bool = False) -> dict:
        """``spectral_norm``: also the weighted hard-confusion spectral norm, a full SVD (about
        95 s on a CPU at K = 8142), so only the final test evaluation asks for it."""
        weights, described = spectral_norm_weighting(self.config, self.class_counts)
        try:
            metrics = evaluate_loader(self.model, self.data.eval_loaders[split], self.class_counts, self.device,
                                      self.precision.chosen, class_weights=weights)
        except NonFiniteOutputError as error:
            raise NonFiniteLossError(f"evaluation of the {split} split ({self._position()}): {error}. Training "
                                     f"stopped, no metrics were written; {self._intact()}") from None
        self.confusions[split] = metrics.confusion.cpu().numpy()
        results = metrics.compute(spectral_norm=spectral_norm)
        if spectral_norm:
            results["confusion_spectral_norm_weighting"] = described
        return results

    def _keep_if_best(self, epoch: int, validation: dict) -> None:
        """Remember this epoch's weights if its validation metric beats every earlier epoch (the first
        of equal values wins). Every rank sees the same all-reduced value, so all decide alike."""
        metric = self.config.train.select_on
        value = validation[metric]
        if self.state.best is None or value > self.state.best["value"]:
            self.state.best = {"epoch": epoch, "metric": f"val/{metric}", "value": value}
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in unwrap(self.model).state_dict().items()}

    @staticmethod
    def _summary(result: dict) -> dict:
        return {k: v for k, v in result.items() if not isinstance(v, (list, dict))}

    def finish(self) -> dict:
        results = {"label": self.label, "epochs": self.config.optim.epochs, "precision": self.precision.to_dict(),
                   "parameters": self.parameters}
        if self.state.best is not None:
            # Report the epoch chosen on the validation split; the checkpoint keeps the last weights.
            unwrap(self.model).load_state_dict(self.best_weights)
            results["selected"] = dict(self.state.best)
        for split in self.data.eval_loaders:
            if split == "train" and not self.config.train.eval_train:
                continue
            results[split] = self.evaluate(split, spectral_norm=split == "test")
        if "train" in results:
            from longtail.metrics import worst_class_ratio

            results["worst_class_test_train_ratio"] = worst_class_ratio(results["test"], results["train"])
        history = self.state.history
        results["train_images_per_s"] = (sum(h["images_per_s"] for h in history) / len(history)) if history else None
        results["train_seconds"] = sum(h["seconds"] for h in history)
        name_classes(results, self.data.classes, self.class_counts)
        if self.context.is_main:
            ckpt.atomic_write_json(self.run_dir / "metrics.json", results)
            from longtail.report.plots import write_run_plots

            write_run_plots(self.run_dir, results, self.class_counts, self.confusions.get("test"),
                            dataset=dataset_title(self.config))
        return results

    def _open_writer(self) -> None:
        if not self.context.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a declared dependency; tolerate a slim install
            return
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.state.epoch)

    def _log_epoch(self, record: dict) -> None:
        if not self.context.is_main:
            return
        # history.jsonl is rewritten from the checkpointed history: a resumed run never duplicates lines.
        lines = "".join(json.dumps(r) + "\n" for r in self.state.history)
        ckpt.atomic_write_text(self.run_dir / "history.jsonl", lines)
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch" and math.isfinite(value):
                    self.writer.add_scalar(f"train/{key}", value, record["epoch"])
            for split in ("test", "val"):
                for key, value in record.get(split, {}).items():
                    if isinstance(value, (int, float)):
                        self.writer.add_scalar(f"{split}/{key}", value, record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        # Inside a `finally`, sys.exc_info() tells whether this rank is leaving because of an error.
        try:
            shutdown(self.context, synchronize=sys.exc_info()[0] is None)
        finally:
            run_lock.release(self._lock)
            self._lock = None


def train(config: RunConfig, label: str, resume_dir: Optional[Path] = None) -> tuple[Path, dict]:
    """Train one run; returns (run directory, final results)."""
    trainer = Trainer(config, label, resume_dir)
    try:
        results = trainer.fit()
        return trainer.run_dir, results
    finally:
        trainer.close()


def config_of_run(run_dir: Path) -> tuple[RunConfig, str]:
    """The config and label a run directory was started with (read from its checkpoint)."""
    state = ckpt.load_run_checkpoint(ckpt.run_checkpoint(ckpt.resume_target(run_dir)))
    return config_from_dict(state["config"]), state["label"]


def finished_results(run_dir: Path) -> Optional[dict]:
    """metrics.json of a run that trained every epoch and wrote its results, else None. `--resume`
    of such a run does nothing (it never rewrites metrics.json)."""
    run_dir = ckpt.resume_target(run_dir)
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        return None
    state = ckpt.load_run_checkpoint(ckpt.run_checkpoint(run_dir))
    if state["epoch"] < state["config"]["optim"]["epochs"]:
        return None
    try:
        return json.loads(metrics.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ckpt.CheckpointError(f"{metrics} is not valid JSON ({error}); the run finished, so there is "
                                   f"nothing to resume: re-evaluate it with `longtail eval {run_dir}`") from None
