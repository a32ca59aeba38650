"""``python -m workbench data``: prepare and check the task files.

    python -m workbench data prepare --from DIR [--to data/tasks] [--tasks NAME ...] [--overwrite]
    python -m workbench data prepare --hub      [--to data/tasks] [--tasks NAME ...] [--overwrite]

A task file already in the target folder that differs from the one to be written is replaced only with --overwrite
(otherwise the command names the files and writes nothing).
    python -m workbench data check [--dir DIR]
"""

from __future__ import annotations

import argparse

from workbench.tasks.prepare import check, default_target, prepare_from, prepare_hub


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True)
    prep = sub.add_parser("prepare", help="validate and copy task files (--from) or build them (--hub)")
    src = prep.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="src", metavar="DIR", help="folder of canonical <task>.json files")
    src.add_argument("--hub", action="store_true", help="build from the Hugging Face hub (needs internet)")
    prep.add_argument("--to", dest="dst", metavar="DIR", default=None,
                      help=f"target folder (default {default_target()})")
    prep.add_argument("--tasks", nargs="+", metavar="NAME", default=None, help="only these tasks")
    prep.add_argument("--overwrite", action="store_true",
                      help="replace target task files that differ from the ones written (e.g. edited by hand)")
    chk = sub.add_parser("check", help="validate the task files of the data folder")
    chk.add_argument("--dir", default=None, help="data folder (default: resolved as load_task does)")


def main(args: argparse.Namespace) -> int:
    if args.data_command == "check":
        sizes = check(args.dir)
        for name, n in sizes.items():
            print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in n.items()))
        print(f"{len(sizes)} task files OK")
        return 0
    written = (prepare_hub(args.dst, args.tasks, overwrite=args.overwrite) if args.hub else
               prepare_from(args.src, args.dst, args.tasks, overwrite=args.overwrite))
    for p in written:
        print(p)
    print(f"{len(written)} task file(s) written to {written[0].parent if written else args.dst}")
    return 0
