"""Progress bars for the notebooks that survive any save: HTML in one output, never an ipywidget.

Why not the ipywidgets bars of ``tqdm.auto``: JupyterLab autosaves every 120 s, and a notebook saved while widget
bars are on screen keeps their ``application/vnd.jupyter.widget-view+json`` outputs; reopened, each shows "Error
displaying widget: model not found" (the widget models live in the kernel, not in the file). Clearing the cell when
the run ends only helps if that final state is saved, and a kernel cannot make the frontend save. So the bars are
drawn as plain HTML (+ a text/plain line for papermill and text exports) in a display that is updated in place by
its display id (``update_display_data``): whatever moment a save catches, the file holds a readable progress line,
and :func:`workbench.ui.session.transient_output` removes it when the block ends.

Module contents: :class:`NotebookBar` (a ``tqdm`` whose bars open at the same time share one output, a "board"),
:func:`use_notebook_bars` (makes ``tqdm.auto`` and the workbench modules that imported it use :class:`NotebookBar`,
in a Jupyter kernel only; :func:`workbench.ui.export.setup_notebook` calls it), :func:`short_description` (a long
``"atv + atv + … + atv"`` label shortened to ``"atv ×20"``).
"""

from __future__ import annotations

import html
import sys
import threading
from collections import Counter
from typing import Any

from tqdm import std

#: longest description shown in full; longer ones are shortened (:func:`short_description`) and cut with "…"
MAX_DESCRIPTION = 60
_TEXT_FORMAT = "{desc}{n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_TEXT_FORMAT_NO_TOTAL = "{desc}{n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def short_description(desc: str, limit: int = MAX_DESCRIPTION) -> str:
    """`desc` as shown: ``"a + a + a"`` → ``"a ×3"``, ``"a + b + a"`` → ``"a ×2 + b"``; then cut to `limit` chars."""
    parts = [p.strip() for p in str(desc).split(" + ")]
    if len(parts) > 1:
        counts = Counter(parts)
        desc = " + ".join(name if n == 1 else f"{name} ×{n}" for name, n in counts.items())
        if len(desc) > limit:
            desc = f"{len(parts)} methods"
    return desc if len(desc) <= limit else desc[: limit - 1] + "…"


class _NullFile:
    """Where a :class:`NotebookBar` sends tqdm's terminal output: nowhere (it draws into its board instead)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _display(bundle: dict[str, str], display_id: str | None = None, update: bool = False) -> Any:
    """Publish `bundle` (raw mime bundle) as a new display (returns its handle) or as an update of `display_id`."""
    from IPython.display import display

    if update:
        return display(bundle, raw=True, display_id=display_id, update=True)
    return display(bundle, raw=True, display_id=True)


class _Board:
    """One output holding every bar open at the same time (nested bars: epochs and steps, methods and tasks)."""

    def __init__(self) -> None:
        self.bars: list[NotebookBar] = []
        self.kept: list[tuple[str, str]] = []  # (html, text) of closed bars with leave=True
        handle = _display({"text/plain": ""})
        self.display_id = getattr(handle, "display_id", None)

    def render(self) -> None:
        rows = [*self.kept, *(bar.rows() for bar in self.bars)]
        bundle = {"text/plain": "\n".join(text for _, text in rows)}
        if rows:
            bundle["text/html"] = "".join(markup for markup, _ in rows)
        if self.display_id is not None:
            _display(bundle, self.display_id, update=True)


class NotebookBar(std.tqdm):
    """A ``tqdm`` drawn as HTML into a shared output updated by display id (see the module docstring).

    Bars open at the same time share one output; when the last one closes, the bars created with ``leave=False``
    disappear from it and the others keep their final line. Redrawn at most every ``mininterval`` s (default 0.5).
    """

    _board: _Board | None = None
    _board_lock = threading.RLock()

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("mininterval", 0.5)
        kwargs["file"] = _NullFile()
        self._joined = False
        super().__init__(*args, **kwargs)
        if self.disable:
            return
        with NotebookBar._board_lock:
            if NotebookBar._board is None:
                NotebookBar._board = _Board()
            self._home = NotebookBar._board
            self._home.bars.append(self)
            self._joined = True
            self._home.render()

    def rows(self) -> tuple[str, str]:
        """(html, text) of this bar's current state."""
        d = self.format_dict
        desc = short_description(d.get("prefix") or "")
        fmt = _TEXT_FORMAT if d.get("total") else _TEXT_FORMAT_NO_TOTAL
        text = self.format_meter(**{**d, "prefix": f"{desc}: " if desc else "", "bar_format": fmt})
        total, n = d.get("total"), d.get("n", 0)
        share = 100.0 * min(1.0, n / total) if total else 0.0
        bar = ('<span style="display:inline-block;width:160px;height:0.8em;background:#e0e0e0;'
               'vertical-align:middle;margin-right:0.5em">'
               f'<span style="display:block;width:{share:.1f}%;height:100%;background:#1976d2"></span></span>')
        markup = (f'<div class="atv-progress" style="font-family:monospace;white-space:nowrap;overflow:hidden;'
                  f'text-overflow:ellipsis;max-width:100%" title="{html.escape(str(d.get("prefix") or ""))}">'
                  f'{bar}{html.escape(text)}</div>')
        return markup, text

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self._joined:
            with NotebookBar._board_lock:
                self._home.render()
        return True

    def close(self) -> None:
        if not self._joined:
            return super().close()
        leave = self.leave if self.leave is not None else True
        super().close()
        with NotebookBar._board_lock:
            board, self._joined = self._home, False
            if self in board.bars:
                board.bars.remove(self)
            if leave:
                board.kept.append(self.rows())
            board.render()
            if not board.bars and NotebookBar._board is board:
                NotebookBar._board = None


def in_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab, papermill), False in a terminal or plain IPython."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return bool(shell) and "IPKernelApp" in getattr(shell, "config", {})


def use_notebook_bars(force: bool = False) -> bool:
    """In a Jupyter kernel (or with `force`), draw every ``tqdm.auto`` bar as a :class:`NotebookBar`.

    Rebinds ``tqdm.auto.tqdm`` (read at call time by transformers and by modules importing it later) and the
    ``tqdm`` name of every loaded ``workbench`` module that imported the ``tqdm.auto`` class. Returns whether it did.
    """
    if not (force or in_kernel()):
        return False
    import tqdm.auto
    import tqdm.autonotebook

    originals = {tqdm.auto.tqdm, tqdm.autonotebook.tqdm} - {NotebookBar}
    tqdm.auto.tqdm = tqdm.autonotebook.tqdm = NotebookBar
    for name, module in list(sys.modules.items()):
        if (name == "workbench" or name.startswith("workbench.")) and getattr(module, "tqdm", None) in originals:
            module.tqdm = NotebookBar
    return True
