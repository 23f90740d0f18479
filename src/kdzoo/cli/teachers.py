"""``kdzoo teachers import|list|verify``: the command of the teacher store
(:mod:`kdzoo.teachers`)."""
from __future__ import annotations

import argparse
import logging
from typing import Any

from ..errors import ConfigError
from ..teachers import command_hint, import_teachers, list_teachers, store_root, verify_teachers
from .catalog import text_table

log = logging.getLogger("kdzoo")


def add_teachers_parser(subparsers: Any) -> None:
    """``kdzoo teachers import PATH ...``, ``kdzoo teachers list``, ``kdzoo teachers verify``."""
    p = subparsers.add_parser("teachers", help="a local, checksummed store of trained teachers",
                              description="Import teachers (a checkpoint, an mdistiller folder "
                                          "or cifar_teachers.tar), list and verify them; a run "
                                          "uses one as --teacher-checkpoint teachers:NAME.")
    actions = p.add_subparsers(dest="teachers_command", metavar="ACTION", required=True)
    imp = actions.add_parser("import", help="copy teachers into the store, checked and tested")
    imp.add_argument("path", metavar="PATH", help="a checkpoint file, a folder of "
                     "<arch>_vanilla/ckpt_epoch_240.pth, or cifar_teachers.tar")
    imp.add_argument("--dataset", help="its dataset (default: from the file; cifar100 for "
                                       "mdistiller's layout)")
    imp.add_argument("--data-dir", metavar="DIR", help="where the dataset's files are")
    imp.add_argument("--model", help="model name (default: from the file or its folder)")
    imp.add_argument("--name", help="store it under this name (default MODEL/DATASET)")
    imp.add_argument("--num-classes", type=int, help="classes (default: file's or dataset's)")
    imp.add_argument("--no-eval", action="store_true", help="do not measure test accuracy")
    imp.add_argument("--overwrite", action="store_true", help="replace a teacher of that name")
    imp.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    imp.add_argument("--trust-checkpoint", action="store_true",
                     help="allow files that need full unpickling (only files you trust)")
    parsers = [imp, actions.add_parser("list", help="the stored teachers"),
               actions.add_parser("verify", help="recheck every stored file's sha256")]
    for parser in parsers:
        parser.add_argument("--store", metavar="DIR", help="the store folder (default "
                            "$KDZOO_TEACHERS or ~/.cache/kdzoo/teachers)")


def cmd_teachers(args: argparse.Namespace) -> int:
    """Run ``kdzoo teachers ACTION``: 0 on success, 1 when verify finds a damaged teacher."""
    if args.teachers_command == "import":
        if args.num_classes is not None and args.num_classes < 1:
            raise ConfigError(f"--num-classes must be positive, got {args.num_classes}")
        entries = import_teachers(args.path, args.store, args.dataset, args.data_dir, args.model,
                                  args.name, not args.no_eval, args.device,
                                  overwrite=args.overwrite, num_classes=args.num_classes,
                                  trust_checkpoint=args.trust_checkpoint)
        log.info("%d teacher(s) of %s in %s; a run uses one as --teacher-checkpoint teachers:%s",
                 len(entries), args.path, store_root(args.store), entries[0]["name"])
        return 0
    if args.teachers_command == "list":
        entries = list_teachers(args.store)
        if not entries:
            print(f"no teachers in {store_root(args.store)}: add some with "
                  f"{command_hint('import PATH', args.store)}")
            return 0
        print(text_table(["name", "model", "dataset", "test top-1", "sha256", "source"],
                     [[e["name"], e["model"], e["dataset"], "-" if e.get("test_top1") is None
                       else f"{e['test_top1']:.2f}", e["sha256"][:12], e["source"]]
                      for e in entries]))
        return 0
    report = verify_teachers(args.store)
    print(text_table(["name", "status", "file"], [[r["name"], r["status"], r["file"]]
                                              for r in report]) if report else
          f"no teachers in {store_root(args.store)}")
    failed = [r["name"] for r in report if r["status"] != "ok"]
    if failed:
        log.error("%d stored teacher(s) failed the check (%s): import each again from its "
                  "source (`kdzoo teachers list`) to restore it", len(failed), ", ".join(failed))
    return 1 if failed else 0
