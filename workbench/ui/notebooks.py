"""Run the numbered notebooks headless with papermill into one run directory (what `make demo` does)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from workbench.core.files import repo_root

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
    """HTML export of an executed notebook next to it (nbconvert, outputs included)."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    target = executed.with_suffix(".html")
    tmp = target.with_suffix(".html.tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(target)
    return target


def run_notebook(name: str, run_dir: Path, parameters: dict[str, Any], kernel: str = "python3", html: bool = True) -> dict:
    """Execute one notebook with papermill into `run_dir` (executed copy + HTML); returns timing info."""
    import papermill as pm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    executed = run_dir / name
    start = time.perf_counter()
    pm.execute_notebook(
        str(notebook_path(name)), str(executed), parameters={**parameters, "run_dir": str(run_dir)},
        kernel_name=kernel, cwd=str(REPO), progress_bar=False,
    )
    info = {"notebook": name, "seconds": round(time.perf_counter() - start, 1), "executed": str(executed)}
    if html:
        info["html"] = str(export_html(executed))
    return info

