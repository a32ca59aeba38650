"""Run the numbered notebooks headless with papermill into one run directory (what `make demo` does)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from workbench.core.files import atomic_write_text, repo_root
from workbench.ui.export import embed_plotly

REPO = repo_root()
NOTEBOOK_DIR = REPO / "notebooks"
DEMO_NOTEBOOKS = (
    "01_train_generator.ipynb",
    "02_static_vs_adaptive.ipynb",
    "03_lambda_and_depth.ipynb",
    "04_vector_geometry.ipynb",
)


def notebook_path(name: str) -> Path:
    path = NOTEBOOK_DIR / name
    if not path.exists():
        available = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
        raise FileNotFoundError(f"notebook {name!r} not found in {NOTEBOOK_DIR}; available: {available}")
    return path


def export_html(executed: Path) -> Path:
    """HTML export of an executed notebook next to it (nbconvert, outputs included; plotly.js added once, so the
    page shows its figures offline while the .ipynb itself carries only the figures' JSON)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(executed, as_version=4)
    embed_plotly(nb)
    body, _ = HTMLExporter().from_notebook_node(nb)
    return atomic_write_text(Path(executed).with_suffix(".html"), body)


def run_notebook(name: str, run_dir: Path, parameters: dict[str, Any], kernel: str = "python3", html: bool = True,
                 cell_timeout: float | None = None) -> dict:
    """Execute one notebook with papermill into `run_dir` (executed copy + HTML); returns timing info.

    ``cell_timeout`` (seconds, None: no limit) fails a cell that runs longer, instead of waiting forever.
    """
    import papermill as pm

    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    executed = run_dir / name
    start = time.perf_counter()
    pm.execute_notebook(
        str(notebook_path(name)), str(executed), parameters={**parameters, "run_dir": str(run_dir)},
        kernel_name=kernel, cwd=str(REPO), progress_bar=False,
        execution_timeout=None if cell_timeout is None else int(cell_timeout),
    )
    info = {"notebook": name, "seconds": round(time.perf_counter() - start, 1), "executed": str(executed),
            "bytes": executed.stat().st_size}
    if html:
        info["html"] = str(export_html(executed))
    return info
