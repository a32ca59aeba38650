"""``python -m workbench.data``: prepare and check the task files.

    python -m workbench.data prepare --from DIR [--to data/tasks] [--tasks NAME ...]
    python -m workbench.data prepare --hub      [--to data/tasks] [--tasks NAME ...]
    python -m workbench.data check [--dir DIR]

``--from`` validates each ``DIR/<task>.json`` (or ``DIR/tasks/<task>.json``) and copies it byte for byte;
``--hub`` builds the files with :mod:`workbench.hub_builders` (needs internet and ``datasets``). Every file is
written to a temporary file in the target folder and moved into place with ``os.replace``, so a task file is
either the old one or the complete new one. The default target ``<repo>/data/tasks`` is git-ignored and is the
folder :func:`workbench.tasks.resolve_data_dir` looks in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .tasks import REGISTRY, SPLITS, read_task_file, repo_root, resolve_data_dir, validate_task_data


def default_target() -> Path:
    return repo_root() / "data" / "tasks"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _source_dir(src: Path) -> Path:
    if not src.is_dir():
        raise FileNotFoundError(f"--from {src} is not a directory")
    if not any(src.glob("*.json")) and any((src / "tasks").glob("*.json")):
        return src / "tasks"
    return src


def _task_files(src: Path, tasks: Sequence[str] | None) -> list[Path]:
    if tasks:
        missing = [t for t in tasks if not (src / f"{t}.json").is_file()]
        if missing:
            raise FileNotFoundError(f"no task file for {missing} in {src}")
        return [src / f"{t}.json" for t in tasks]
    files = sorted(p for p in src.glob("*.json") if p.name != "templates.json")
    if not files:
        raise FileNotFoundError(f"no task files (*.json) in {src}")
    return files


def prepare_from(src: str | os.PathLike, dst: str | os.PathLike | None = None,
                 tasks: Sequence[str] | None = None) -> list[Path]:
    """Validate every task file in `src` (all, or `tasks`) and copy it to `dst`; returns the written paths.

    All files are validated before any is written, so a bad file leaves the target untouched.
    """
    src_dir = _source_dir(Path(src))
    target = Path(dst) if dst is not None else default_target()
    files = _task_files(src_dir, tasks)
    payloads = []
    for f in files:
        read_task_file(f)  # raises TaskDataError naming file / split / item
        payloads.append((target / f.name, f.read_bytes()))
    if target.resolve() == src_dir.resolve():
        return [p for p, _ in payloads]
    for path, data in payloads:
        write_atomic(path, data)
    return [p for p, _ in payloads]


def encode_task(splits: dict) -> bytes:
    """Canonical bytes of a task file: keys train, valid, test in order, compact, UTF-8."""
    obj = {s: [{"input": r["input"], "output": r["output"]} for r in splits[s]] for s in SPLITS}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def prepare_hub(dst: str | os.PathLike | None = None, tasks: Sequence[str] | None = None,
                loader=None) -> list[Path]:
    """Build task files from the hub (default: the 25 paper tasks) and write them atomically."""
    from . import hub_builders

    target = Path(dst) if dst is not None else default_target()
    names = list(tasks) if tasks else list(REGISTRY)
    written = []
    for name in names:
        splits = hub_builders.load_hub_task(name, **({"loader": loader} if loader else {}))
        validate_task_data(splits, f"hub build of {name}")
        path = target / f"{name}.json"
        write_atomic(path, encode_task(splits))
        written.append(path)
    return written


def check(data_dir: str | os.PathLike | None = None) -> dict[str, dict[str, int]]:
    """Validate every task file of the data folder; returns split sizes per task."""
    d = resolve_data_dir(data_dir)
    return {p.stem: {s: len(v) for s, v in read_task_file(p).items()} for p in sorted(d.glob("*.json"))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="validate and copy task files (--from) or build them (--hub)")
    src = prep.add_mutually_exclusive_group(required=True)
    src.add_argument("--from", dest="src", metavar="DIR", help="folder of canonical <task>.json files")
    src.add_argument("--hub", action="store_true", help="build from the Hugging Face hub (needs internet)")
    prep.add_argument("--to", dest="dst", metavar="DIR", default=None, help=f"target folder (default {default_target()})")
    prep.add_argument("--tasks", nargs="+", metavar="NAME", default=None, help="only these tasks")
    chk = sub.add_parser("check", help="validate the task files of the data folder")
    chk.add_argument("--dir", default=None, help="data folder (default: resolved as load_task does)")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            sizes = check(args.dir)
            for name, n in sizes.items():
                print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in n.items()))
            print(f"{len(sizes)} task files OK")
            return 0
        written = prepare_hub(args.dst, args.tasks) if args.hub else prepare_from(args.src, args.dst, args.tasks)
    except Exception as e:  # noqa: BLE001 (a CLI: report any failure — bad file, no network — in one line)
        print(f"error: {e}", file=sys.stderr)
        return 1
    for p in written:
        print(p)
    print(f"{len(written)} task file(s) written to {written[0].parent if written else args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
