"""The `longtail` command: train, evaluate, compare, and list what is available.

Exit codes: 0 success; 1 a failure during work (non-finite loss, I/O); 2 a usage / configuration
/ data problem found before any work started; 128+N interrupted by signal N (checkpoint saved);
141 stdout was closed by its reader (`| head -1`), stopped quietly.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Optional

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # as if killed by SIGPIPE (13), what a shell reports for `cmd | head -1`


class UsageError(Exception):
    """Bad input detected before work starts; printed without a traceback, exit code 2."""


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", help="shipped recipe, `protocol` or `protocol/method` (see `longtail recipes`); "
                                         "default: fashion-mnist-lt")
    parser.add_argument("--config", help="YAML config file (may name a shipped recipe as `base:`)")
    parser.add_argument("--method", help="method preset applied on top of the recipe (see `longtail recipes`)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="dotted overrides, e.g. optim.lr=0.05 loss.name=ccar_bs regularizer.name=car")


def _add_encoded_prior_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoded-prior", default=None, metavar="train|uniform|FILE",
                        help="the class prior the model's logits encode, for prior adaptation (default: from the "
                             "run's loss and sampler, e.g. training frequencies for ce, uniform for bs / la; "
                             "needed for losses where it is not known)")


def build_parser() -> argparse.ArgumentParser:
    from longtail.engine.config import describe_keys

    parser = argparse.ArgumentParser(
        prog="longtail", description="Long-tailed image recognition: train, evaluate and compare methods.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train one model from a recipe",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train one model from a recipe (--recipe fashion-mnist-lt is the default one). With no "
                    "arguments at all: the quick start, plain cross-entropy, Balanced Softmax and CCAR + Balanced "
                    "Softmax on the embedded Fashion-MNIST-LT (RESULTS.md's CPU protocol, about a minute on 2 "
                    "cores), ending with a comparison table and a verdict.",
        epilog="configuration keys (set with section.key=value):\n" + describe_keys())
    _add_config_arguments(train)
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    evaluate = commands.add_parser("eval", help="re-evaluate a run directory or checkpoint")
    evaluate.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT")
    evaluate.add_argument("--split", default="test", choices=("test", "train", "val"),
                          help="which split to evaluate (default: test)")
    evaluate.add_argument("--data-root", default=None, metavar="DIR",
                          help="score another folder laid out like the run's training data (same dataset type "
                               "and class names), e.g. a new image folder DIR/test/<class>/*")
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    evaluate.add_argument("--tta", default="none", help=TTA_HELP)
    evaluate.add_argument("--test-priors", action="store_true",
                          help="score the run under shifted test priors (SADE's forward-rho / uniform / backward-rho "
                               "subsets of the split), without adaptation, with the oracle prior and with the "
                               "EM-estimated prior; writes RUN_DIR/test_priors.json and plots/test_priors.png "
                               "(docs/priors.md)")
    evaluate.add_argument("--rhos", default=None, metavar="R1,R2,...",
                          help="test imbalance ratios of --test-priors, each > 1 (default: 50,25,10,5,2)")
    evaluate.add_argument("--draws", type=int, default=None,
                          help="seeded draws per test prior of --test-priors (default 5; draw d uses seed + d)")
    evaluate.add_argument("--seed", type=int, default=None, help="seed of the first draw of --test-priors (default 0)")
    _add_encoded_prior_argument(evaluate)

    predict = commands.add_parser(
        "predict", help="predict the classes of image files with a trained run (no training data needed)",
        description="Classify image files (or folders, searched recursively) with the weights a run reports. "
                    "Writes per image: path, predicted class, its probability, and the top-k classes with "
                    "probabilities; CSV or JSON by the --output extension, a table on stdout without --output.")
    predict.add_argument("run", metavar="RUN_DIR")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    predict.add_argument("--output", default=None, metavar="FILE.csv|FILE.json")
    predict.add_argument("--top-k", type=int, default=5, help="classes listed per image (default 5)")
    predict.add_argument("--posthoc", default=None, metavar="METHOD_OR_FILE",
                         help="apply the post-hoc classifier `longtail posthoc` chose: tau_norm, logit_adjust, ncm, "
                              "temperature (reads RUN_DIR/posthoc_<method>.json) or the path of such a file")
    predict.add_argument("--skip-unreadable", action="store_true",
                         help="skip images that cannot be decoded or preprocessed (listed on stderr) instead of failing "
                              "(exit 2, nothing written)")
    predict.add_argument("--adapt-prior", default=None, metavar="em|uniform|FILE",
                         help="shift the logits to a deployment class prior (docs/priors.md): em (estimated from the "
                              "images being predicted, Saerens et al. 2002), uniform, or a class-frequency FILE "
                              "(JSON {class name: frequency}, or one number per line in class order)")
    _add_encoded_prior_argument(predict)
    predict.add_argument("--batch-size", type=int, default=64)
    predict.add_argument("--tta", default="none", help=TTA_HELP)
    predict.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")

    export = commands.add_parser(
        "export", help="export a run's model to TorchScript or ONNX, with its preprocessing beside it",
        description="Export the weights a run reports (validation-selected when it selected). Writes the model "
                    "and OUTPUT.json: class names, input shape, preprocessing (resize, mean / std).")
    export.add_argument("run", metavar="RUN_DIR")
    export.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    export.add_argument("--output", default=None,
                        help="file to write (default: RUN_DIR/export/model.pt or model.onnx)")

    posthoc = commands.add_parser(
        "posthoc", help="post-hoc classifier of a trained run: tau-norm, logit adjustment, NCM or temperature scaling "
                        "(no training)",
        description="Choose tau on the run's validation split (data.validation_per_class), then evaluate the test "
                    "split once with it. tau_norm: classifier rows w_j / ||w_j|| ** tau, bias dropped (Kang et al.); "
                    "logit_adjust: logits - tau log pi (Menon et al.); ncm: nearest class mean of the training "
                    "features, cosine (Kang et al.), no tau; temperature: logits / T (Guo et al.), T chosen on the "
                    "validation NLL, which recalibrates the probabilities and changes no prediction. "
                    "Writes RUN_DIR/posthoc_<method>.json.")
    posthoc.add_argument("target", metavar="RUN_DIR")
    posthoc.add_argument("--method", required=True, choices=("tau_norm", "logit_adjust", "ncm", "temperature"))
    posthoc.add_argument("--taus", default=None,
                         help="comma-separated candidates (default 0,0.1,...,2; temperature: 0.25 to 8 in steps of "
                              "2**0.1); one value applies it without choosing")
    posthoc.add_argument("--select-on", default=None,
                         help="validation metric to maximise (default balanced_accuracy; temperature is always "
                              "chosen on the lowest validation NLL)")
    posthoc.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")

    recipes = commands.add_parser("recipes", help="list the shipped recipes and method presets")
    recipes.add_argument("--show", metavar="RECIPE", help="print the resolved config of one recipe")

    compare = commands.add_parser(
        "compare", help="run a grid of methods x seeds and write comparison tables and plots",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_arguments(compare)
    compare.add_argument("--methods", required=True,
                         help="comma-separated method presets, e.g. ce,la,bs,ccar_bs; a preset may carry its own "
                              "overrides after colons: ccar_ce:loss.omega=0.5 or car:regularizer.alpha=1.0. "
                              "Stage-2 presets (crt, lws) start from the same-seed cell of the first stage-1 "
                              "method, or of the one named by crt:model.init_from=^METHOD")
    compare.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    compare.add_argument("--imbalance-factors", default=None, help="comma-separated imbalance factors (optional)")
    compare.add_argument("--reference", default=None, help="method the deltas are measured against (default: first)")
    compare.add_argument("--output", default=None, help="comparison directory (default: runs/compare-<recipe>)")
    compare.add_argument("--jobs", type=int, default=None,
                         help="cells to run at the same time (processes; default: one single-thread process per CPU "
                              "core, one per --devices entry, 1 on a CUDA machine; BENCHMARKS.md)")
    compare.add_argument("--devices", default=None,
                         help="comma-separated devices to spread cells over, e.g. cuda:0,cuda:1")
    compare.add_argument("--paired", action=argparse.BooleanOptionalAction, default=True,
                         help="same seed => same split, initialisation and data order for every method (default on)")

    data = commands.add_parser("data", help="list datasets, or analyse one (class counts, imbalance, groups)")
    data.add_argument("name", nargs="?", help="dataset to analyse")
    data.add_argument("--root", default=None)
    data.add_argument("--imbalance-factor", type=float, default=None)
    data.add_argument("--all-classes", action="store_true", help="list every class (default: the 50 largest)")

    commands.add_parser("losses", help="list the loss names")
    commands.add_parser("models", help="list the model names")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    try:
        try:
            return _run(argv)
        finally:
            if sys.stdout is not None:
                sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
    except BrokenPipeError:
        # The reader of stdout went away (`longtail ... | head -1`): stop quietly, as Unix tools do on
        # SIGPIPE, and point stdout at /dev/null so the interpreter's last flush does not fail again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass  # stdout is not a file descriptor (redirected in Python): nothing will flush to the pipe
        return EXIT_BROKEN_PIPE


def _run(argv: Optional[list[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    handler = {"train": cmd_train, "eval": cmd_eval, "posthoc": cmd_posthoc, "predict": cmd_predict,
               "export": cmd_export, "recipes": cmd_recipes,
               "compare": cmd_compare,
               "data": cmd_data, "losses": cmd_losses, "models": cmd_models}[args.command]
    from longtail.engine.errors import ConfigError

    try:
        code = handler(args) or 0
    except (UsageError, ConfigError) as error:  # ConfigError: e.g. --device bogus, wherever it is read
        print(f"longtail {args.command}: error: {error}", file=sys.stderr)
        code = EXIT_USAGE
    if args.command == "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from longtail.engine.runtime.distributed import exit_worker

        exit_worker(code)  # a torchrun worker: skip interpreter finalization (see exit_worker)
    return code


# --------------------------------------------------------------------------- commands


def _resolve_config(args):
    from longtail.engine.config import ConfigError, build_config

    try:
        return build_config(args.recipe, args.config, args.overrides, args.method)
    except ConfigError as error:
        raise UsageError(str(error)) from None


def cmd_train(args) -> int:
    from longtail.engine.rundir.checkpoint import CheckpointError, OutputWriteError
    from longtail.engine.rundir.lock import RunLockedError
    from longtail.engine.config import ConfigError, dump_yaml
    from longtail.engine.training.trainer import (NonFiniteLossError, Trainer, TrainingInterrupted, config_of_run,
                                         finished_results)
    from longtail.report.tables import per_class_table, results_table

    if not (args.resume or args.recipe or args.config or args.overrides or args.method or args.print_config):
        return quick_start()
    from longtail.engine.compare import stop_with_compare

    stop_with_compare()  # a compare cell: stops (saving a checkpoint) if its compare is killed
    if args.resume:
        if args.recipe or args.config or args.overrides or args.method:
            raise UsageError("--resume continues a run with its saved config; give no recipe, config or overrides")
        try:
            config, label = config_of_run(Path(args.resume))
            finished = finished_results(Path(args.resume))
        except (CheckpointError, ConfigError) as error:
            raise UsageError(str(error)) from None
        if finished is not None:
            # Exit 0: the run is complete, which is what --resume asks for; metrics.json is not rewritten.
            print(f"{args.resume} has finished all {config.optim.epochs} epochs; nothing to resume and its "
                  f"metrics.json is left as it is. Its results:")
            print(results_table(finished))
            return 0
    else:
        config, label = _resolve_config(args)
    main_process = int(os.environ.get("RANK", "0")) == 0
    if args.print_config:
        print(dump_yaml(config), end="")
        return 0
    if main_process:
        print(f"# recipe: {label}\n" + dump_yaml(config), end="", flush=True)
    try:
        trainer = Trainer(config, label, Path(args.resume) if args.resume else None)
    except (ValueError, FileNotFoundError, CheckpointError, RunLockedError) as error:
        # building data / model / loss failed: bad config or data, nothing was trained
        raise UsageError(str(error)) from None
    except OutputWriteError as error:
        raise UsageError(f"{error.strerror or error}; check train.output_dir") from None
    try:
        results = trainer.fit()
    except NonFiniteLossError as error:
        print(f"longtail train: error: {error}", file=sys.stderr)
        return 1
    except OutputWriteError as error:
        where = (f"the last good checkpoint ({trainer.last_saved}) is intact" if trainer.last_saved
                 else "no checkpoint had been written")
        print(f"longtail train: error: {error.strerror or error}. Training stopped; {where}. Free space "
              f"(or fix permissions) and continue with: longtail train --resume {trainer.run_dir}",
              file=sys.stderr)
        return 1
    except TrainingInterrupted as stop:
        if main_process:
            print(f"longtail train: interrupted; checkpoint saved in {trainer.run_dir / 'checkpoints'}. "
                  f"Continue with: longtail train --resume {trainer.run_dir}", file=sys.stderr)
        return int(stop.code)
    finally:
        trainer.close()
    if main_process:
        print(results_table(results))
        print(per_class_table(results))
        print(f"run directory: {trainer.run_dir}")
    return 0


# The quick start (bare `longtail train`): the point of the project in about a minute. RESULTS.md's
# CPU protocol (6 epochs, small CNN at width 16) on the embedded Fashion-MNIST-LT, seed 0. Three
# methods: cross-entropy, Balanced Softmax (the method docs/own-data.md says to start with on natural
# images) and CCAR + BS (the best worst-class accuracy on this grey data in RESULTS.md), so the user
# sees what CCAR adds over its own base, not only over CE (issue 19 item 7).
QUICK_START_METHODS = "ce,bs,ccar_bs"
TTA_HELP = ("test-time augmentation, off by default: flip (image + mirror) | five_crop (corners + centre of the "
            "image enlarged by 24/224, LIFT's) | ten_crop (five_crop of image and mirror); logits averaged")
QUICK_START_OVERRIDES = ["optim.epochs=6", "model.options={width: 16}"]


def quick_start() -> int:
    import argparse as _argparse
    import datetime

    output = Path("runs") / f"quickstart-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    jobs = 2 if (os.cpu_count() or 1) >= 2 else 1
    print("longtail train with no arguments: the quick start. It trains plain cross-entropy (ce), Balanced "
          "Softmax (bs) and CCAR + Balanced Softmax (ccar_bs) on the embedded Fashion-MNIST-LT "
          "(imbalance factor 100), RESULTS.md's CPU protocol (6 epochs, small CNN width 16, seed 0), "
          f"{jobs} at a time, then compares them on overall and tail (Medium / worst-class) accuracy.\n"
          "One run of the default recipe instead: longtail train --recipe fashion-mnist-lt\n"
          f"Same as: longtail compare --recipe fashion-mnist-lt --methods {QUICK_START_METHODS} --seeds 0 "
          f"--reference ce --jobs {jobs} --output {output} " + " ".join(f'"{o}"' for o in QUICK_START_OVERRIDES),
          flush=True)
    args = _argparse.Namespace(recipe="fashion-mnist-lt", config=None, method=None, overrides=QUICK_START_OVERRIDES,
                               methods=QUICK_START_METHODS, seeds="0", imbalance_factors=None, reference="ce",
                               output=str(output), jobs=jobs, devices=None, paired=True)
    return cmd_compare(args)


def _tta(args) -> str:
    from longtail.models.tta import TTA_MODES

    if args.tta not in TTA_MODES:
        raise UsageError(f"--tta {args.tta!r} is not valid; choose one of: {', '.join(TTA_MODES)}")
    return args.tta


def cmd_eval(args) -> int:
    from longtail.engine.rundir.checkpoint import CheckpointError
    from longtail.engine.evaluation.evaluate import evaluate_run
    from longtail.engine.training.scoring import NonFiniteOutputError, name_classes
    from longtail.report.tables import per_class_table, results_table

    if args.test_priors:
        if _tta(args) != "none":
            raise UsageError("--tta is not combined with --test-priors (which scores the model's own logits); "
                             "run them separately")
        return _eval_test_priors(args)
    given = [f"--{name.replace('_', '-')}" for name in ("rhos", "draws", "seed", "encoded_prior")
             if getattr(args, name) is not None]
    if given:
        raise UsageError(f"{', '.join(given)} only apply with --test-priors")
    if args.data_root is not None:
        from longtail.engine.evaluation.inference import InferenceError, evaluate_data_root, load_run

        try:
            loaded = load_run(args.target, args.device).with_tta(_tta(args))
            results, notes = evaluate_data_root(loaded, args.data_root, args.split)
        except InferenceError as error:
            raise UsageError(str(error)) from None
        results = name_classes({args.split: results}, loaded.classes, loaded.class_counts)
        print("\n".join(notes))
        print(results_table(results))
        print(per_class_table(results))
        return 0
    try:
        results = evaluate_run(Path(args.target), args.split, args.device, _tta(args))
    except (CheckpointError, ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None
    except NonFiniteOutputError as error:
        print(f"longtail eval: error: {error}", file=sys.stderr)
        return 1
    print(results_table(results))
    print(per_class_table(results))
    return 0


def _check_output_file(output: Path, option: str) -> None:
    """Refuse, before any work, an output file that cannot be written: an existing directory, or a
    place where nothing can be created (a file as parent, a read-only mount, /proc, /sys)."""
    from longtail.engine.rundir.runinfo import unwritable_reason

    if output.is_dir():
        raise UsageError(f"{option} {output} is a directory; give a file path in it, e.g. {output / 'model'}")
    reason = unwritable_reason(output.parent)
    if reason:
        raise UsageError(f"{option} {output}: {reason}; choose another path")


def _shown(path: str) -> str:
    """A file name for text output: bytes that are not UTF-8 (kept by Python as surrogates) as \\xNN."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _eval_test_priors(args) -> int:
    """`longtail eval RUN --test-priors`: table, RUN/test_priors.json, RUN/plots/test_priors.png."""
    from longtail.engine.rundir.checkpoint import (CheckpointError, OutputWriteError, atomic_write_bytes,
                                                   atomic_write_json)
    from longtail.engine.evaluation.priors import DEFAULT_DRAWS, PriorError, evaluate_shifted_priors
    from longtail.engine.training.scoring import NonFiniteOutputError
    from longtail.metrics.priors import TEST_PRIOR_RHOS, shifted_prior_names
    from longtail.report.plots import shifted_prior_plot
    from longtail.report.tables import shifted_prior_table

    if args.data_root is not None:
        raise UsageError("--test-priors scores the run's own split; it does not take --data-root")
    try:
        rhos = list(TEST_PRIOR_RHOS) if args.rhos is None else [float(r) for r in args.rhos.split(",")]
        shifted_prior_names(rhos)
    except ValueError as error:
        raise UsageError(f"--rhos must be comma-separated numbers > 1 like 50,10,2 ({error})") from None
    draws = DEFAULT_DRAWS if args.draws is None else args.draws
    seed = 0 if args.seed is None else args.seed
    if draws < 1:
        raise UsageError(f"--draws must be at least 1, got {draws}")
    target = Path(args.target)
    if not target.exists():
        raise UsageError(f"{target} does not exist (give a run directory or its checkpoint file)")
    run_dir = target if target.is_dir() else (target.parent.parent if target.parent.name == "checkpoints"
                                              else target.parent)
    try:
        report = evaluate_shifted_priors(target, args.split, args.device, rhos, draws, seed, args.encoded_prior)
    except (CheckpointError, PriorError, ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None
    except NonFiniteOutputError as error:
        print(f"longtail eval: error: {error}", file=sys.stderr)
        return 1
    output = run_dir / "test_priors.json"
    plot = run_dir / "plots" / "test_priors.png"
    try:
        atomic_write_json(output, report)
        atomic_write_bytes(plot, shifted_prior_plot(report))
    except OutputWriteError as error:
        print(f"longtail eval: error: {error}", file=sys.stderr)
        return 1
    print(f"encoded prior of the logits: {report['encoded_prior_source']}")
    print(f"{report['note']}; {report['draws']} draw(s) per prior, n_max = {report['n_max']}")
    print(shifted_prior_table(report))
    print(f"written: {output}, {plot}")
    return 0


def _write_predictions(predictions: list, output: Optional[str], header: dict) -> None:
    from longtail.engine.rundir.checkpoint import atomic_write_json, atomic_write_text

    if output is None:
        from longtail.report.tables import markdown_table

        rows = [[_shown(p["path"]), p["prediction"], f"{p['probability']:.4f}",
                 ", ".join(f"{name} {prob:.3f}" for name, prob in p["top_k"][1:])] for p in predictions]
        print(markdown_table(["path", "prediction", "probability", "next"], rows))
        return
    if output.endswith(".json"):
        records = [{"path": p["path"], "prediction": p["prediction"], "probability": p["probability"],
                    "top_k": [{"class": name, "probability": prob} for name, prob in p["top_k"]]}
                   for p in predictions]
        atomic_write_json(Path(output), {**header, "predictions": records})
        return
    import csv
    import io

    k = max((len(p["top_k"]) for p in predictions), default=0)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "prediction", "probability"]
                    + [column for i in range(1, k + 1) for column in (f"class_{i}", f"probability_{i}")])
    for p in predictions:
        writer.writerow([_shown(p["path"]), p["prediction"], f"{p['probability']:.6f}"]
                        + [cell for name, prob in p["top_k"] for cell in (name, f"{prob:.6f}")])
    atomic_write_text(Path(output), buffer.getvalue())


def cmd_predict(args) -> int:
    from longtail.engine.evaluation.inference import InferenceError, find_images, load_run, predict_files
    from longtail.engine.evaluation.priors import PriorError, prior_adaptation

    if args.output is not None and not args.output.endswith((".csv", ".json")):
        raise UsageError(f"--output must end in .csv or .json, got {args.output!r}")
    if args.top_k < 1 or args.batch_size < 1:
        raise UsageError("--top-k and --batch-size must be at least 1")
    if args.output is not None:
        _check_output_file(Path(args.output), "--output")
    try:
        files = find_images(args.paths)
        if not files:
            raise InferenceError(f"no image files ({', '.join(sorted({'.jpg', '.png', '.jpeg'}))}, ...) under "
                                 f"{', '.join(args.paths)}")
        tta = _tta(args)
        loaded = load_run(args.run, args.device, posthoc=args.posthoc).with_tta(tta)
        adaptation = None
        if args.adapt_prior is not None:
            adaptation = prior_adaptation(loaded, args.adapt_prior, args.encoded_prior)
        elif args.encoded_prior is not None:
            raise InferenceError("--encoded-prior only matters with --adapt-prior")
        predictions, unreadable = predict_files(loaded, files, args.top_k, args.batch_size, adjust=adaptation)
    except (InferenceError, PriorError) as error:
        raise UsageError(str(error)) from None
    if unreadable:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in unreadable[:50])
        more = f"\n  ... and {len(unreadable) - 50} more" if len(unreadable) > 50 else ""
        if not args.skip_unreadable:
            raise UsageError(f"{len(unreadable)} image(s) cannot be used (nothing written):\n{listing}{more}\n"
                             f"Remove or fix them, or pass --skip-unreadable to predict the others.")
        print(f"longtail predict: skipped {len(unreadable)} unusable image(s):\n{listing}{more}", file=sys.stderr)
    header = {"run": str(loaded.run_dir), "weights": loaded.weights,
              "posthoc": None if loaded.posthoc is None else {"method": loaded.posthoc.method,
                                                              "tau": loaded.posthoc.tau,
                                                              "source": loaded.posthoc.source},
              "adapt_prior": None if adaptation is None else adaptation.summary(),
              "skipped_unreadable": [path for path, _ in unreadable]}
    try:
        _write_predictions(predictions, args.output, header)
    except OSError as error:  # a check above passed, the write did not (the disk filled, ...)
        print(f"longtail predict: error: cannot write {args.output}: {error.strerror or error}", file=sys.stderr)
        return 1
    adjusted = "" if loaded.posthoc is None else f", post-hoc {loaded.posthoc.describe()}"
    adjusted += "" if tta == "none" else f", test-time augmentation {tta}"
    if adaptation is not None:
        _print_adaptation(adaptation, len(predictions), sys.stderr if args.output is None else sys.stdout)
    where = f" -> {args.output}" if args.output else ""
    print(f"{len(predictions)} image(s) predicted with {loaded.run_dir} ({loaded.weights}{adjusted}){where}",
          file=sys.stderr if args.output is None else sys.stdout)
    return 0


def _print_adaptation(adaptation, images: int, stream) -> None:
    def listing(prior):
        return ", ".join(f"{name} {value:.4f}" for name, value in list(prior.items())[:20]) + (
            " ..." if len(prior) > 20 else "")

    summary = adaptation.summary()
    print(f"prior adaptation ({summary['mode']}): logits + log pi_target - log pi_encoded", file=stream)
    print(f"  encoded prior: {summary['encoded_prior_source']}: {listing(summary['encoded_prior'])}", file=stream)
    if summary["target_prior"] is None:  # no usable image: EM had nothing to estimate from
        print("  target prior: none (no image was predicted)", file=stream)
        return
    how = ""
    if "em" in summary:
        em = summary["em"]
        how = (f" (EM over the {images} predicted images, {em['iterations']} steps"
               f"{'' if em['converged'] else ', NOT converged'})")
    print(f"  target prior{how}: {listing(summary['target_prior'])}", file=stream)


def cmd_export(args) -> int:
    from longtail.engine.evaluation.inference import InferenceError, export_run, load_run

    suffix = ".onnx" if args.format == "onnx" else ".pt"
    output = Path(args.output) if args.output else Path(args.run) / "export" / f"model{suffix}"
    _check_output_file(output, "--output")
    try:
        loaded = load_run(args.run, "cpu")
        written = export_run(loaded, args.format, output)
    except InferenceError as error:
        raise UsageError(str(error)) from None
    except (OSError, RuntimeError) as error:  # the checks passed, the write did not (torch raises RuntimeError)
        print(f"longtail export: error: cannot write {output}: {' '.join(str(error).split())[:300]}", file=sys.stderr)
        return 1
    print(f"exported {loaded.run_dir} ({loaded.weights}) as {args.format}: {written}\n"
          f"metadata (classes, preprocessing, input shape): {written}.json")
    return 0


def cmd_posthoc(args) -> int:
    from longtail.engine.rundir.checkpoint import CheckpointError, atomic_write_json
    from longtail.engine.config import SELECTABLE_METRICS
    from longtail.engine.evaluation.posthoc import run_posthoc
    from longtail.report.tables import format_percent, results_table

    if args.select_on is not None and args.select_on not in SELECTABLE_METRICS:
        raise UsageError(f"--select-on {args.select_on!r} is not valid; choose one of: {', '.join(SELECTABLE_METRICS)}")
    taus = None  # the method's default candidates
    if args.taus is not None:
        try:
            taus = [float(t) for t in args.taus.split(",")]
        except ValueError:
            raise UsageError(f"--taus must be comma-separated numbers like 0,0.5,1, got {args.taus!r}") from None
        bad = [text for text, tau in zip(args.taus.split(","), taus) if not math.isfinite(tau)]
        if bad:  # nan / inf / 1e400 would give non-finite logits, which would be blamed on the model
            raise UsageError(f"--taus must be finite numbers like 0,0.5,1; {', '.join(bad)} is not")
    run_dir = Path(args.target)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a run directory (runs/<run>, holding checkpoints/last.pt)")
    try:
        result = run_posthoc(run_dir, args.method, taus, args.select_on, args.device)
    except (CheckpointError, ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None
    name = "T" if args.method == "temperature" else "tau"
    metric = result["select_on"].removeprefix("val/")
    for entry in result["sweep"]:
        value = entry["val"][metric]
        shown = f"{value:.4f}" if metric == "nll" else format_percent(value)
        print(f"{name} {entry['tau']:g}: val {metric} {shown}")
    if result["tau"] is not None:
        chosen = "chosen on the validation split" if result["sweep"] else "given"
        print(f"{name} = {result['tau']:g} ({chosen})")
    print(results_table({"test": result["test"]}))
    output = run_dir / f"posthoc_{args.method}.json"
    class_means = result.pop("class_means", None)
    if class_means is not None:  # NCM: what `longtail predict --posthoc ncm` classifies with
        from longtail.engine.rundir.checkpoint import save_checkpoint

        save_checkpoint(output.with_suffix(".pt"), {"class_means": class_means})
    atomic_write_json(output, result)
    print(f"written: {output}")
    return 0


def cmd_recipes(args) -> int:
    from longtail.engine.config import (ConfigError, available_protocols, build_config, dump_yaml, load_methods,
                                        protocol_methods, read_yaml, RECIPE_DIR)

    if args.show:
        try:
            config, _ = build_config(args.show)
        except ConfigError as error:
            raise UsageError(str(error)) from None
        print(dump_yaml(config), end="")
        return 0
    methods = load_methods()
    print("Recipes (use `longtail train --recipe NAME`; NAME is a protocol or protocol/method):\n")
    for protocol in available_protocols():
        data = read_yaml(RECIPE_DIR / "protocols" / f"{protocol}.yaml")
        print(f"{protocol}: {data.get('description', '')}")
        paper = data.get("paper", {}) or {}
        for method in protocol_methods(protocol):
            target = paper.get(method)
            aim = f"  (paper: {target})" if target else ""
            print(f"    {protocol}/{method}{aim}")
    print("\nMethod presets (also for `longtail compare --methods`):")
    for name, preset in sorted(methods.items()):
        print(f"  {name}: {preset.get('description', '')}")
    return 0


def cmd_compare(args) -> int:
    from longtail.engine.compare import CellFailed, run_comparison
    from longtail.engine.config import ConfigError
    from longtail.engine.rundir.lock import RunLockedError

    try:
        output = run_comparison(args)
    except (ConfigError, RunLockedError) as error:
        raise UsageError(str(error)) from None
    except CellFailed as failure:
        print(f"longtail compare: error: {failure}", file=sys.stderr)
        return failure.code
    print()
    print((output / "comparison.md").read_text(encoding="utf-8"), end="")
    print(f"comparison written to {output}")
    return 0


def cmd_data(args) -> int:
    import longtail.data as data

    if not args.name:
        print("\n".join(data.available_datasets()))
        return 0
    options = {}
    if args.imbalance_factor is not None:
        options["imbalance_factor"] = args.imbalance_factor
    split = "train"
    if args.name == "imagefolder" and args.root and not (Path(args.root) / "train").is_dir():
        split = "all"  # a single folder root/<class>/*: train splits it per class (data.test_fraction)
    try:
        if split == "all" and options:
            # What `train` would train on: the test split is held out first, then made long-tailed.
            from longtail.engine.config import build_config
            from longtail.engine.training.data_setup import _build_sets
            from longtail.engine.runtime.distributed import DistributedContext

            config, _ = build_config(None, None, ["data.name=imagefolder", f"data.root={args.root}",
                                                  f"data.imbalance_factor={args.imbalance_factor}"])
            dataset = _build_sets(config, DistributedContext()).train
        else:
            dataset = data.build_dataset(args.name, split, root=args.root, **options)
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from None
    report = data.analyze(dataset.labels, num_classes=len(dataset.classes))
    print(report)
    print(report.class_table(dataset.classes, limit=None if args.all_classes else 50))
    if split == "all":
        print("single folder (no train/ sub-folder): `longtail train` holds out data.test_fraction of each class "
              "as the test split")
    return 0


def cmd_losses(args) -> int:
    from longtail.losses import available_losses

    print("\n".join(available_losses()))
    return 0


def cmd_models(args) -> int:
    from longtail.models import available_models

    print("\n".join(available_models()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
