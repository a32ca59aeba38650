"""What the notebooks call in their first cells: one place for run folders, the generator of notebook 01 and its
training tasks, a live figure, and progress bars that leave nothing behind.

Run folders: a relative ``run_dir`` is resolved against the repository root (the folder holding ``notebooks/``), not
against the kernel's working directory, so JupyterLab (kernels start in ``notebooks/``), papermill and ``make demo``
(started at the root) all mean the same folder. The notebooks 01–04 share the default ``runs/notebooks``: 01 writes
``runs/notebooks/generator``, 02–04 read it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from workbench.core.files import read_json, repo_root

#: the run folder notebooks 01–04 share by default (relative to :data:`BASE`)
DEFAULT_RUN_DIR = "runs/notebooks"


def base_dir() -> Path:
    """Where relative run folders live: the repository root when the package sits in a checkout, else the cwd."""
    root = repo_root()
    return root if (root / "notebooks").is_dir() else Path.cwd()


def run_folder(run_dir: str | os.PathLike | None = None, create: bool = True) -> Path:
    """The absolute run folder for a notebook's ``run_dir`` parameter (relative: under :func:`base_dir`)."""
    path = Path(DEFAULT_RUN_DIR if run_dir in (None, "") else run_dir).expanduser()
    path = path if path.is_absolute() else base_dir() / path
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"run_dir {str(path)!r} is a file; give a folder (default {DEFAULT_RUN_DIR!r})")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def generator_folder(generator_dir: str | os.PathLike | None, run_dir: Path) -> Path:
    """``generator_dir`` (relative: under :func:`base_dir`), or ``run_dir/generator``; FileNotFoundError naming what
    to do when no generator checkpoint is there."""
    if generator_dir:
        path = Path(generator_dir).expanduser()
        path = path if path.is_absolute() else base_dir() / path
    else:
        path = Path(run_dir) / "generator"
    if not (path / "generator.json").is_file():
        raise FileNotFoundError(
            f"no trained generator at {path}: run notebook 01 first (it writes <run_dir>/generator, default "
            f"{base_dir() / DEFAULT_RUN_DIR / 'generator'}), or set generator_dir to a folder written by "
            "ATVGenerator.save / `python -m workbench train`")
    return path


def generator_tasks(generator: Any, generator_dir: str | os.PathLike, tasks: Sequence[str] | None = None,
                    echo: Callable[[str], Any] = print) -> list[str]:
    """The tasks a notebook evaluates: `tasks` if given, else the generator's training tasks; always printed.

    Looked up in order: ``generator.meta["tasks"]``, the ``tasks`` key of ``generator.json``, then the
    ``01_config.json`` notebook 01 wrote next to the generator. A generator that recorded none is an error (naming
    the files read) rather than a silent switch to some preset's tasks.
    """
    if tasks:
        names = [tasks] if isinstance(tasks, str) else list(tasks)
        echo(f"tasks: {names} (the notebook's `tasks` parameter)")
        return names
    folder = Path(generator_dir)
    meta = getattr(generator, "meta", {}) or {}
    if meta.get("tasks"):
        names, source = list(meta["tasks"]), 'generator.meta["tasks"]'
    else:
        saved = read_json(folder / "generator.json") if (folder / "generator.json").is_file() else {}
        config = folder.parent / "01_config.json"
        from_config = read_json(config).get("tasks") if config.is_file() else None
        if saved.get("tasks"):
            names, source = list(saved["tasks"]), f"{folder / 'generator.json'} (generator.meta has no 'tasks')"
        elif from_config:
            names, source = list(from_config), f"{config} (the generator itself recorded no tasks)"
        else:
            raise ValueError(f"the generator at {folder} did not record its training tasks "
                             "(no generator.meta['tasks'], "
                             f"no 'tasks' in generator.json, no {config}); set the notebook's `tasks` parameter")
    echo(f"tasks: {names} (the generator's training tasks, from {source})")
    return names


@contextmanager
def transient_output() -> Iterator[None]:
    """Show what the block displays (tqdm.auto progress bars, a live figure) while it runs, then clear the cell.

    tqdm.auto draws ipywidgets in JupyterLab; left in a saved notebook they turn into "Error displaying widget: model
    not found" when it is reopened. Display results after the block. On an error the output is kept, to be read.
    """
    yield
    from IPython.display import clear_output

    clear_output()


class LiveFigure:
    """A figure that redraws in place (one display, updated by id: no widget, nothing large in the message).

    ``live = LiveFigure(make_figure, "waiting for the first epoch …")`` then ``live(data)`` after each step; use it as
    ``train_atv(..., callback=live)``.
    """

    def __init__(self, make: Callable[[Any], Any], placeholder: str = "waiting for the first update …"):
        from IPython.display import Markdown, display

        from workbench.ui.export import figure_bundle

        self.make, self._bundle, self.updates = make, figure_bundle, 0
        self.handle = display(Markdown(placeholder), display_id=True)

    def __call__(self, data: Any) -> None:
        self.updates += 1
        fig = self.make(data)
        if self.handle is not None:
            self.handle.update(self._bundle(fig), raw=True)
