"""Save notebook outputs (figures, tables, JSON) into a run directory, atomically, with the package versions.

Every writer goes through a temporary file in the destination directory and :func:`os.replace`, so a crash
mid-write leaves either the old file or the new one, never a truncated one, and no temporary file behind.

PNG export (:func:`save_figure`) uses plotly + kaleido 1.x, which drives a Chrome/Chromium browser. kaleido finds one
through choreographer: the ``BROWSER_PATH`` environment variable if set, else ``chromium``/``chromium-browser``/
``google-chrome``… on ``PATH`` (or ``/usr/bin/chromium``). On Debian ``apt-get install -y chromium`` is enough. Without
a browser the HTML is still written and the PNG skipped with one warning.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DEFAULT_PACKAGES", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "find_browser",
    "new_run_dir", "package_versions", "save_figure", "save_table", "setup_notebook",
]

#: Distributions reported by :func:`package_versions` by default (plus ``python`` and ``platform``).
DEFAULT_PACKAGES: tuple[str, ...] = (
    "torch", "transformers", "nnsight", "peft", "accelerate", "datasets", "numpy", "pandas",
)

_png_warned = False


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would give a new file (mkstemp uses 0o600)


@contextmanager
def _atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path``; on success fsync and ``os.replace`` it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding, newline=None if "b" in mode else "") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same directory + ``os.replace``); returns the path.

    Parent directories are created. Newlines are written as given (no platform translation).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    with _atomic_open(path, "w", encoding) as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with _atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def _json_default(obj: Any) -> Any:
    """Convert numpy / torch scalars and arrays, paths, sets, dataclasses and datetimes to JSON types."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    mod = type(obj).__module__.split(".")[0]
    if mod in ("numpy", "torch"):
        if hasattr(obj, "detach"):
            obj = obj.detach().cpu()
        if hasattr(obj, "tolist"):
            return obj.tolist()  # numpy/torch scalars -> Python scalars, arrays/tensors -> nested lists
        if hasattr(obj, "item"):
            return obj.item()
        return str(obj)  # e.g. numpy/torch dtypes
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON (sorted keys, indent 2, trailing newline) to ``path`` atomically; returns the path.

    numpy / torch scalars and arrays, :class:`~pathlib.Path`, sets, dataclasses and datetimes are converted.
    The object is serialized completely before the file is touched, so a serialization error leaves an
    existing file unchanged.
    """
    text = json.dumps(obj, sort_keys=True, indent=2, default=_json_default, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


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


def find_browser() -> str | None:
    """The Chrome/Chromium executable kaleido would use (``BROWSER_PATH``, ``PATH``, typical paths), or None."""
    try:
        from choreographer.browsers.chromium import Chromium
    except ImportError:
        return None
    try:
        path = Chromium.find_browser(skip_local=False)
    except Exception:  # noqa: BLE001 - discovery is best effort
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
    except Exception as err:  # noqa: BLE001 - a missing/broken browser must not crash a notebook
        _warn_png(f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}")
        return out
    out["png"] = atomic_write_bytes(run_dir / f"{name}.png", data)
    return out


def package_versions(names: Iterable[str] | None = None) -> dict[str, str | None]:
    """Installed versions of ``names`` (default :data:`DEFAULT_PACKAGES`) plus ``python`` and ``platform``.

    Looked up from package metadata (nothing is imported); a missing package maps to None.
    """
    out: dict[str, str | None] = {}
    for name in DEFAULT_PACKAGES if names is None else names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = sys.version.split()[0]
    out["platform"] = platform.platform()
    return out


def new_run_dir(root: str | os.PathLike = "runs", prefix: str = "",
                clock: Callable[[], _dt.datetime] = _dt.datetime.now) -> Path:
    """Create and return a fresh ``root/[prefix-]YYYYmmdd-HHMMSS`` directory (``-1``, ``-2``… appended on clashes)."""
    if prefix and Path(prefix).name != prefix:
        raise ValueError(f"prefix must not contain path separators, got {prefix!r}")
    stamp = clock().strftime("%Y%m%d-%H%M%S")
    base = f"{prefix}-{stamp}" if prefix else stamp
    Path(root).mkdir(parents=True, exist_ok=True)
    for i in range(10_000):
        path = Path(root) / (base if i == 0 else f"{base}-{i}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not create a new run directory under {root!r} for {base!r}")


def setup_notebook(renderer: str = "plotly_mimetype+notebook") -> None:
    """Plotly renderer for the notebooks: interactive in JupyterLab and embedded (offline) in HTML exports."""
    import plotly.io as pio

    pio.renderers.default = renderer
