"""Figure and table export into a run folder: self-contained HTML (+ PNG when a browser exists), CSV tables; plotly.js
added to a notebook's figures at export time (:func:`embed_plotly`).

Notebook outputs carry plotly figures as the ``application/vnd.plotly.v1+json`` mimetype only (:func:`setup_notebook`):
JupyterLab renders it natively (the ``jupyterlab-plotly`` extension that ships with plotly), so an executed notebook
stays small (a few kB per figure instead of the 4.6 MB plotly.js bundle). HTML files (per figure, and the notebooks'
HTML exports) embed plotly.js once, so they show their figures offline.

PNG export (:func:`save_figure`) uses plotly + kaleido 1.x, which drives a Chrome/Chromium browser. kaleido finds one
through choreographer: the ``BROWSER_PATH`` environment variable if set, else ``chromium``/``chromium-browser``/
``google-chrome``… on ``PATH`` (or ``/usr/bin/chromium``). On Debian ``apt-get install -y chromium`` is enough. Without
a browser the HTML is still written and the PNG skipped with one warning. Every write is atomic
(:mod:`workbench.core.files`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from workbench.core.files import _atomic_open, atomic_write_bytes, atomic_write_text
from workbench.ui.progress import use_notebook_bars

_png_warned = False


def find_browser() -> str | None:
    """The Chrome/Chromium executable kaleido would use (``BROWSER_PATH``, ``PATH``, typical paths), or None."""
    try:
        from choreographer.browsers.chromium import Chromium
    except ImportError:
        return None
    try:
        path = Chromium.find_browser(skip_local=False)
    except Exception:  # discovery is best effort
        return None
    return path if path and os.access(path, os.X_OK) else None


def _warn_png(reason: str) -> None:
    global _png_warned
    if not _png_warned:
        _png_warned = True
        warnings.warn(
            f"PNG export skipped ({reason}); the HTML is still written. kaleido needs a Chrome/Chromium browser: "
            "`apt-get install -y chromium` (Debian), or set BROWSER_PATH=/path/to/chrome. "
            "This warning is shown once per process.",
            RuntimeWarning,
            stacklevel=3,
        )


def save_figure(
    fig: Any, run_dir: str | os.PathLike, name: str, *, png: bool | None = None,
    width: int | None = None, height: int | None = None, scale: float = 2.0,
) -> dict[str, Path]:
    """Save a plotly figure as ``run_dir/name.html`` (self-contained: plotly.js embedded, works offline) and
    ``run_dir/name.png`` (via kaleido; skipped with one warning if no browser is found or export fails).

    ``png=None`` follows ``$ATV_PNG`` (``0`` turns PNG export off, e.g. in tests: each PNG starts a browser, ~5 s).
    Returns ``{"html": path}`` plus ``"png": path`` when the PNG was written.
    """
    import plotly.io as pio

    _check_name(name)
    run_dir = Path(run_dir)
    out = {"html": atomic_write_text(run_dir / f"{name}.html",
                                     pio.to_html(fig, include_plotlyjs=True, full_html=True))}
    if png is None:
        png = os.environ.get("ATV_PNG", "1") != "0"
    if not png:
        return out
    if find_browser() is None:
        _warn_png("no Chrome/Chromium found")
        return out
    try:
        data = pio.to_image(fig, format="png", width=width, height=height, scale=scale)
    except Exception as err:  # a missing/broken browser must not crash a notebook
        _warn_png(f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}")
        return out
    out["png"] = atomic_write_bytes(run_dir / f"{name}.png", data)
    return out


PLOTLY_MIME = "application/vnd.plotly.v1+json"


def setup_notebook(renderer: str = "plotly_mimetype") -> None:
    """Plotly renderer for the notebooks: the plotly mimetype only (JupyterLab renders it; no plotly.js in outputs).

    Do not add ``+notebook`` here: that renderer puts the whole plotly.js bundle (~4.6 MB) into the first figure's
    output, which bloats every saved notebook and, displayed into an ``ipywidgets.Output``, hangs papermill.
    In a Jupyter kernel it also makes progress bars HTML instead of ipywidgets
    (:func:`workbench.ui.progress.use_notebook_bars`: a file saved mid-run then reopens without widget errors).
    """
    import plotly.io as pio

    pio.renderers.default = renderer
    use_notebook_bars()


def figure_bundle(fig: Any) -> dict[str, Any]:
    """The display bundle of a plotly figure as JupyterLab renders it (plotly mimetype + a text/plain title)."""
    import plotly.io as pio

    bundle = pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict())
    title = fig.layout.title.text if fig.layout.title and fig.layout.title.text else "plotly figure"
    return {**bundle, "text/plain": f"<Figure: {title}>"}


def plotly_js_html() -> str:
    """plotly.js as inline ``<script>`` tags that define ``window.Plotly`` even when require.js is on the page
    (nbconvert's HTML template loads it, and plotly.js would then register as an AMD module instead)."""
    from plotly.offline import get_plotlyjs

    return ("<script>window.PlotlyConfig = {MathJaxConfig: 'local'}; "
            "window.__atvDefine = window.define; window.define = undefined;</script>\n"
            f"<script charset=\"utf-8\">{get_plotlyjs()}</script>\n"
            "<script>window.define = window.__atvDefine;</script>\n")


def embed_plotly(nb: Any) -> int:
    """Give every plotly-mimetype output of the notebook node `nb` a ``text/html`` rendering (in place).

    nbconvert's HTML export does not render the plotly mimetype; this adds the HTML (plotly.js inlined once, before
    the first figure) so the exported page shows every figure offline. Outputs that already have HTML are left alone.
    Returns the number of figures converted.
    """
    import plotly.io as pio

    done = 0
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            data = out.get("data") or {}
            if PLOTLY_MIME not in data or "text/html" in data:
                continue
            html = pio.to_html(dict(data[PLOTLY_MIME]), include_plotlyjs=False, full_html=False, validate=False)
            data["text/html"] = (plotly_js_html() if done == 0 else "") + html
            done += 1
    return done


def _check_name(name: str) -> str:
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"name must be a plain file stem without directories, got {name!r}")
    return name


def save_table(df: Any, run_dir: str | os.PathLike, name: str, **to_csv_kwargs: Any) -> Path:
    """Write a pandas DataFrame to ``run_dir/name.csv`` atomically (``index=False`` unless given); returns the path."""
    _check_name(name)
    to_csv_kwargs.setdefault("index", False)
    path = Path(run_dir) / f"{name}.csv"
    with _atomic_open(path, "w") as f:
        df.to_csv(f, **to_csv_kwargs)
    return path
