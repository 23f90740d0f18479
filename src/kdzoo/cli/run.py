"""``kdzoo train``, ``kdzoo eval`` and ``kdzoo cache-teacher``, and the run options that
``kdzoo train`` and ``kdzoo zoo`` share (:func:`add_run_options`, :func:`run_overrides`)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import KdzooError

log = logging.getLogger("kdzoo")


def add_train_parser(sub: Any) -> None:
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
    from ..spec import resolve_config
    from ..distributed import launched_rank
    from ..engine import fit

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


def add_eval_parser(sub: Any) -> None:
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
    p.add_argument("--preset", help="whose crop padding and normalisation constants (default "
                                    "reference; the runs' own preset)")


def _trained_model_and_data(args: argparse.Namespace, model_name: str,
                            checkpoint: str) -> tuple[Any, Any, torch.device]:
    """(model with its weights, dataset, device) for eval and cache-teacher, checking the
    cheap inputs before loading anything."""
    from ..engine.build import load_run_data
    from ..environment import resolve_device
    from ..models import create_model, freeze, model_factory
    from ..spec import resolve_config
    from ..teachers import checkpoint_file

    model_factory(model_name)
    if args.batch_size < 1:
        raise KdzooError(f"--batch-size must be positive, got {args.batch_size}")
    device = resolve_device(args.device)
    # the data as a run of the preset sees it: its crop padding and normalisation constants
    spec = resolve_config(overrides={
        "student": {"name": model_name}, "data": {"name": args.data, "data_dir": args.data_dir,
                                                  "download": args.download},
        **({"preset": args.preset} if args.preset else {})})
    data = load_run_data(spec)
    checkpoint = checkpoint_file(checkpoint, model_name, data.num_classes, data.in_chans)
    model = create_model(model_name, num_classes=data.num_classes, in_chans=data.in_chans,
                         checkpoint=checkpoint, trust_checkpoint=args.trust_checkpoint)
    return freeze(model).to(device), data, device


def cmd_eval(args: argparse.Namespace) -> int:
    from ..data import BatchLoader
    from ..metrics import evaluate

    model, data, device = _trained_model_and_data(args, args.model, args.checkpoint)
    result = evaluate(model, BatchLoader(data, args.batch_size, device))
    print(f"{args.model} on {args.data} test ({len(data.test_labels)} images): "
          f"top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}%, loss {result['loss']:.4f}")
    return 0


def add_cache_parser(sub: Any) -> None:
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
    p.add_argument("--preset", help="whose crop padding and normalisation constants (default "
                                    "reference; the runs' own preset)")


def cmd_cache_teacher(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..engine.build import CPU_INFERENCE_CHUNK
    from ..engine.cache import TeacherCache, fill_cache
    from ..engine.teacher import TeacherRunner
    from ..models import FeatureRequest

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
