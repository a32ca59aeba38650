"""What the notebooks call in their first cells: one place for run folders, the generator of notebook 01 and its
training tasks, a live figure that redraws, and progress that leaves nothing behind.

Run folders: a relative ``run_dir`` is resolved against the checkout that holds the kernel's working directory (the
folder holding ``notebooks/`` and ``workbench/``; the package's own checkout only as a fallback), not against the
working directory itself, so JupyterLab (kernels start in ``notebooks/``), papermill and ``make demo`` (started at the
root) all mean the same folder, and a venv shared by two checkouts writes into the one whose notebook ran.
The notebooks 01–04 share the default ``runs/notebooks``: 01 writes
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


def is_checkout(folder: Path) -> bool:
    """Whether `folder` is a checkout of this workbench (``notebooks/`` and the ``workbench/`` package beside it)."""
    return (folder / "notebooks").is_dir() and (folder / "workbench" / "__init__.py").is_file()


def base_dir(cwd: str | os.PathLike | None = None) -> Path:
    """Where relative run folders live: the checkout holding the kernel's working directory (JupyterLab and papermill
    start a notebook's kernel in its own folder, ``notebooks/``), so one venv serving two checkouts writes each
    notebook's runs into its own checkout; else the checkout holding the package; else the working directory."""
    here = Path.cwd() if cwd is None else Path(cwd)
    here = here.resolve()
    for folder in (here, *here.parents):
        if is_checkout(folder):
            return folder
    root = repo_root()
    return root if is_checkout(root) else here


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
    """Show what the block displays (progress bars, a live figure) while it runs, then clear the cell.

    The progress bars are HTML, not ipywidgets (:mod:`workbench.ui.progress`), so a save at any moment of the block
    stores a readable line, never a widget that turns into "Error displaying widget: model not found" when the file
    is reopened. Clearing at the end keeps the finished file to what matters: display results after the block. On
    an error the output is kept, to be read.
    """
    yield
    from IPython.display import clear_output

    clear_output()


class LiveFigure:
    """A plotly figure that redraws after every update, in one display (no widget, nothing large in a message).

    ``live = LiveFigure(make_figure, "waiting for the first epoch …")`` then ``live(data)`` after each step; use it as
    ``train_atv(..., callback=live)``. :attr:`figure` is the last figure drawn.

    Why each update is sent twice: JupyterLab reuses an output's renderer when an ``update_display_data`` keeps the
    same mimetype, and the plotly mimetype renderer ignores a new model once it has drawn a graph (its
    ``renderModel`` returns early, plotly/plotly.py#3053), so a plain update froze the curve after the first epoch.
    An update to a one-line ``text/plain`` placeholder first makes JupyterLab dispose of the plotly renderer; the
    figure then arrives in a fresh one. Other choices were worse: a ``plotly.graph_objects.FigureWidget`` is an
    ipywidget (it would leave "model not found" in a file saved mid-run, and needs the widget manager), and a new
    display per epoch leaves one output per epoch behind. Headless (papermill) each update replaces the output in
    place: the saved notebook holds the last figure's JSON only (a few kB; never the 4.6 MB plotly.js bundle, which,
    sent into an ``ipywidgets.Output``, once hung papermill).
    """

    def __init__(self, make: Callable[[Any], Any], placeholder: str = "waiting for the first update …"):
        from IPython.display import Markdown, display

        from workbench.ui.export import figure_bundle

        self.make, self._bundle, self.updates, self.figure = make, figure_bundle, 0, None
        self.handle = display(Markdown(placeholder), display_id=True)

    def __call__(self, data: Any) -> None:
        self.updates += 1
        self.figure = self.make(data)
        if self.handle is not None:
            self.handle.update({"text/plain": f"redrawing (update {self.updates}) …"}, raw=True)
            self.handle.update(self._bundle(self.figure), raw=True)
