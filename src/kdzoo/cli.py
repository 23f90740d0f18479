"""The ``kdzoo`` command line. ``main(argv)`` returns the exit status, so tests can call it.

Exit status 0 on success, 2 for bad input: every user error is one line on stderr naming the
problem and the fix, without a traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from .version import __version__
from .errors import KdzooError
from .teachers import add_teachers_parser, cmd_teachers
from .zoo.commands import (add_plot_parser, add_report_parser, add_zoo_parser, cmd_plot,
                           cmd_report, cmd_zoo)

log = logging.getLogger("kdzoo")


class UsageError(KdzooError):
    """Bad command-line syntax (argparse's complaint, as one line)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _add_train_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="train a network, or distil a teacher into a student",
                       description="Train a student with a distillation method. Flags override "
                                   "--config, which overrides --preset; --set key=value "
                                   "overrides everything.")
    p.add_argument("--method", help="distillation method (`kdzoo list methods`); default baseline")
    p.add_argument("--teacher", help="teacher model name")
    p.add_argument("--student", help="student model name (default resnet20)")
    p.add_argument("--data", help="dataset (`kdzoo list datasets`); default digits")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/<names>-s<seed>)")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML config file")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (its config.yaml supplies the settings)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run files of an existing --out folder")
    add_run_options(p)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of a run that `kdzoo train` and `kdzoo zoo` share."""
    p.add_argument("--teacher-checkpoint", metavar="FILE",
                   help="the teacher's trained weights (a file, or teachers:NAME from the store)")
    p.add_argument("--untrained-teacher", action="store_true",
                   help="allow a teacher without a checkpoint (smoke tests, benchmarks)")
    p.add_argument("--student-init", metavar="FILE",
                   help="initial student weights (default: seeded from model, classes and seed)")
    p.add_argument("--data-dir", metavar="DIR", help="where the dataset's files are")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument("--val-split", type=float, metavar="FRACTION",
                   help="hold out this stratified fraction of the training data for validation: "
                        "the best epoch is then chosen on it, not on the test set")
    p.add_argument("--preset", help="training recipe: reference (default) or repdistiller")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="initial learning rate")
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--threads", type=int,
                   help="torch's CPU threads for the run (default: torch's own choice)")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set method.temperature=3 (repeatable)")
    p.add_argument("--deterministic", action="store_true",
                   help="use PyTorch's deterministic algorithms (CPU runs are bit-reproducible "
                        "anyway)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow checkpoints that need full unpickling (only for files you trust)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files (RUN_DIR/tensorboard) of every loss "
                        "term and metric")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics of the global batch, synchronised "
                        "across processes (as one process would compute them)")
    p.add_argument("--precision", choices=["float32", "float64"],
                   help="float64: train, evaluate and run the teacher in double precision on "
                        "the CPU, so runs agree to float64 rounding across process counts and "
                        "batch shapes (slower; for exactness checks)")
    speed = p.add_argument_group("speed")
    speed.add_argument("--compile", action="store_true",
                       help="torch.compile the student and the frozen teacher (start-up cost)")
    speed.add_argument("--amp", choices=["bf16", "fp16"],
                       help="mixed precision (fp16: CUDA only; bf16 is fast only on GPUs and "
                            "CPUs with native bfloat16)")
    speed.add_argument("--cudnn-benchmark", action="store_true",
                       help="let cuDNN pick the fastest convolution algorithms (CUDA; runs "
                            "are then not bit-reproducible)")
    speed.add_argument("--teacher-cache", action="store_true",
                       help="reuse (and fill) the on-disk teacher logits of every augmented "
                            "view; for methods that need only the teacher's logits")
    speed.add_argument("--cache-dir", metavar="DIR", help="where teacher caches live")
    speed.add_argument("--plain", action="store_true",
                       help="turn the fast path off (no channels_last, no BatchNorm folding in "
                            "the teacher): the reference-style loop, for comparisons")


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys given as flags (flags not given, or that the command does not have, do
    not override anything)."""
    args = argparse.Namespace(**{**{k: None for k in ("method", "teacher", "student", "data",
                                                      "seed", "out")}, **vars(args)})
    flags = {
        ("method", "name"): args.method,
        ("teacher", "name"): args.teacher,
        ("teacher", "checkpoint"): args.teacher_checkpoint,
        ("teacher", "untrained"): args.untrained_teacher or None,
        ("student", "name"): args.student,
        ("student", "init"): args.student_init,
        ("data", "name"): args.data,
        ("data", "data_dir"): args.data_dir,
        ("data", "download"): args.download or None,
        ("data", "val_split"): args.val_split,
        ("tensorboard",): args.tensorboard or None,
        ("sync_bn",): getattr(args, "sync_bn", False) or None,
        ("optim", "epochs"): args.epochs,
        ("optim", "batch_size"): args.batch_size,
        ("optim", "lr"): args.lr,
        ("preset",): args.preset,
        ("seed",): args.seed,
        ("device",): args.device,
        ("threads",): getattr(args, "threads", None),
        ("out",): args.out,
        ("trust_checkpoint",): args.trust_checkpoint or None,
        ("deterministic",): args.deterministic or None,
        ("compile",): args.compile or None,
        ("amp",): args.amp,
        ("precision",): getattr(args, "precision", None),
        ("cudnn_benchmark",): args.cudnn_benchmark or None,
        ("teacher_cache",): args.teacher_cache or None,
        ("cache_dir",): args.cache_dir,
        ("channels_last",): False if args.plain else None,
        ("fold_teacher_bn",): False if args.plain else None,
    }
    overrides: dict[str, Any] = {}
    for path, value in flags.items():
        if value is None:
            continue
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    from .spec import resolve_config
    from .distributed import launched_rank
    from .engine import fit

    config_file = args.config
    if args.resume and config_file is None and args.out is not None:
        # `kdzoo train --out RUN --resume` alone continues a run with its own settings; flags
        # given as well must agree with them (a difference is refused, never applied).
        saved = Path(args.out) / "config.yaml"
        config_file = saved if saved.is_file() else None
    config = resolve_config(config_file, run_overrides(args), args.assignments)
    result = fit(config, resume=args.resume, overwrite=args.overwrite,
                 progress=False if args.no_progress else None)
    s = result.summary
    if launched_rank() == 0:  # under torchrun, rank 0 speaks for the run
        log.info("done: best test top-1 %.2f%% (epoch %s), last %.2f%%; student in %s",
                 s["best_top1"] or 0.0, s["best_top1_epoch"], s["last_top1"] or 0.0,
                 result.path / "student.pt")
    return 0


def _add_eval_parser(sub: Any) -> None:
    p = sub.add_parser("eval", help="test a trained model on a dataset's test split")
    p.add_argument("--model", required=True, help="model name (`kdzoo list models`)")
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="weights: a kdzoo student.pt, a state dict, or a reference zoo / "
                        "RepDistiller file")
    p.add_argument("--data", required=True, help="dataset name")
    p.add_argument("--data-dir", metavar="DIR")
    p.add_argument("--download", action="store_true")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--trust-checkpoint", action="store_true")


def _trained_model_and_data(args: argparse.Namespace, model_name: str,
                            checkpoint: str) -> tuple[Any, Any, torch.device]:
    """(model with its weights, dataset, device) for eval and cache-teacher, checking the
    cheap inputs before loading anything."""
    from .data import load_dataset
    from .engine.build import freeze, resolve_device
    from .models import create_model, model_factory
    from .teachers import checkpoint_file

    model_factory(model_name)
    if args.batch_size < 1:
        raise KdzooError(f"--batch-size must be positive, got {args.batch_size}")
    device = resolve_device(args.device)
    data = load_dataset(args.data, args.data_dir, args.download)
    checkpoint = checkpoint_file(checkpoint, model_name, data.num_classes, data.in_chans)
    model = create_model(model_name, num_classes=data.num_classes, in_chans=data.in_chans,
                         checkpoint=checkpoint, trust_checkpoint=args.trust_checkpoint)
    return freeze(model).to(device), data, device


def cmd_eval(args: argparse.Namespace) -> int:
    from .data import BatchLoader
    from .engine import evaluate

    model, data, device = _trained_model_and_data(args, args.model, args.checkpoint)
    result = evaluate(model, BatchLoader(data, args.batch_size, device))
    print(f"{args.model} on {args.data} test ({len(data.test_labels)} images): "
          f"top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}%, loss {result['loss']:.4f}")
    return 0


def _add_list_parser(sub: Any) -> None:
    p = sub.add_parser("list", help="list models, methods, datasets or presets")
    p.add_argument("what", choices=["models", "methods", "datasets", "presets", "grids"])


def cmd_list(args: argparse.Namespace) -> int:
    from .catalog import describe

    print(describe(args.what))
    return 0


def _add_demo_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="a small distillation on the embedded digits data "
                                    "(teacher, baseline student, distilled student)")
    p.add_argument("--out", metavar="DIR", default="runs/demo",
                   help="the demo's zoo folder (its finished runs are reused when run again)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true",
                   help="accepted for compatibility: the demo logs one line per epoch")


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, epochs=args.epochs, seed=args.seed)
    return 0


def _add_cache_parser(sub: Any) -> None:
    p = sub.add_parser("cache-teacher",
                       help="compute a teacher's logits for every augmented training view once, "
                            "for all later runs with --teacher-cache")
    p.add_argument("--teacher", required=True, help="teacher model name")
    p.add_argument("--teacher-checkpoint", required=True, metavar="FILE")
    p.add_argument("--data", required=True, help="dataset name")
    p.add_argument("--data-dir", metavar="DIR")
    p.add_argument("--download", action="store_true")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where caches live (default $KDZOO_CACHE or ~/.cache/kdzoo)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the teacher")
    p.add_argument("--trust-checkpoint", action="store_true")


def cmd_cache_teacher(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .engine.build import CPU_INFERENCE_CHUNK
    from .engine.cache import TeacherCache, fill_cache
    from .engine.teacher import TeacherRunner
    from .models import FeatureRequest

    teacher, data, device = _trained_model_and_data(args, args.teacher, args.teacher_checkpoint)
    cache = TeacherCache.for_teacher(teacher, data, args.cache_dir)
    runner = TeacherRunner(teacher, FeatureRequest(), compile=args.compile,
                           memory_format=torch.channels_last,
                           chunk=CPU_INFERENCE_CHUNK if device.type == "cpu" else None)
    views = cache.views.size
    log.info("teacher cache %s: %d images x %d views x %d classes (%.0f%% filled)",
             cache.folder, len(data.train_labels), views, data.num_classes,
             100 * cache.filled_fraction())
    with tqdm(total=views, disable=not sys.stderr.isatty(), desc="views") as bar:
        computed = fill_cache(cache, data, lambda x: runner(x).logits, args.batch_size,
                              device, progress=lambda done, total: bar.update(1))
    log.info("computed %d teacher forwards; the cache is complete: use --teacher-cache "
             "(with the same --cache-dir) in kdzoo train", computed)
    return 0


def _add_bench_parser(sub: Any) -> None:
    from .bench.run import CASES, BenchOptions

    d = BenchOptions()
    p = sub.add_parser("bench", help="measure kdzoo's training step against the conventional "
                                     "loop of the other zoos, in one process")
    p.add_argument("--cases", default=",".join(d.cases),
                   help=f"comma-separated, from {', '.join(CASES)} (default: all)")
    p.add_argument("--teacher", default=d.teacher)
    p.add_argument("--student", default=d.student)
    p.add_argument("--batch-size", type=int, help="default 128 (64 for crd)")
    p.add_argument("--steps", type=int, default=d.steps, help="timed steps per round and side")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--images", type=int, default=d.images, help="training images written")
    p.add_argument("--test-images", type=int, default=d.test_images)
    p.add_argument("--device", default=d.device)
    p.add_argument("--compile", action="store_true",
                   help="also time kdzoo with --compile (a third side)")
    p.add_argument("--amp", choices=["bf16", "fp16"],
                   help="also time kdzoo with --amp (another side)")
    p.add_argument("--epoch", action="store_true",
                   help="also time a whole epoch plus evaluation on each side")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--workdir", metavar="DIR", help="folder for the temporary data")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.run import CASES, BenchOptions, run_bench
    from .registry import did_you_mean

    cases = tuple(c.strip() for c in args.cases.split(",") if c.strip())
    for case in cases:
        if case not in CASES:
            raise KdzooError(f"unknown bench case '{case}'{did_you_mean(case, list(CASES))}; "
                             f"cases: {', '.join(CASES)}")
    for name in ("steps", "rounds", "images", "test_images"):
        if getattr(args, name) < 1:
            raise KdzooError(f"--{name.replace('_', '-')} must be positive")
    if args.json and Path(args.json).exists():
        raise KdzooError(f"{args.json} exists; choose another --json file")
    options = BenchOptions(cases=cases, teacher=args.teacher, student=args.student,
                           batch_size=args.batch_size, steps=args.steps, rounds=args.rounds,
                           warmup=args.warmup, images=args.images, test_images=args.test_images,
                           device=args.device, compile=args.compile, amp=args.amp,
                           epoch=args.epoch,
                           threads=args.threads, workdir=args.workdir)
    results = run_bench(options, report=log.info)
    if args.json:
        from .io import atomic_write_json

        atomic_write_json(args.json, results)
        log.info("results written to %s", args.json)
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "list": cmd_list, "demo": cmd_demo,
            "cache-teacher": cmd_cache_teacher, "bench": cmd_bench, "teachers": cmd_teachers,
            "zoo": cmd_zoo, "report": cmd_report, "plot": cmd_plot}


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kdzoo", description="kdzoo: the knowledge-distillation zoo")
    parser.add_argument("--version", action="version", version=f"kdzoo {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in (_add_train_parser, add_zoo_parser, add_report_parser, add_plot_parser,
                _add_eval_parser, _add_list_parser, _add_demo_parser, _add_cache_parser,
                _add_bench_parser, add_teachers_parser):
        add(sub)
    return parser


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is now (it may be replaced, e.g. by test capture)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def _setup_logging(quiet: bool) -> None:
    # --quiet silences the console only: the logger stays at INFO so that every run's log.txt
    # (a file handler added for the run) is complete.
    logger = logging.getLogger("kdzoo")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = next((h for h in logger.handlers if isinstance(h, _StdoutHandler)), None)
    if handler is None:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    handler.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the kdzoo command; returns the exit status (0 ok, 2 bad input)."""
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        _setup_logging(args.quiet)
        return COMMANDS[args.command](args)
    except KdzooError as exc:
        print(f"kdzoo: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except SystemExit as exc:  # --help and --version exit through argparse
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("kdzoo: interrupted; resume the run with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
