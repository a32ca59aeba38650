"""Run-directory helpers: atomic writes, JSON conversion, figures (HTML always, PNG when a browser exists)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.core import files as reporting
from workbench.core.files import atomic_write_bytes, atomic_write_json, atomic_write_text, new_run_dir, package_versions
from workbench.ui import export
from workbench.ui.export import find_browser, save_figure, save_table


@pytest.fixture(autouse=True)
def png_on(monkeypatch):
    """conftest turns PNG export off for the suite; these tests are about it."""
    monkeypatch.setenv("ATV_PNG", "1")

def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_text_and_bytes(tmp_path):
    p = atomic_write_text(tmp_path / "sub" / "a.txt", "héllo\nworld\n")
    assert p.read_text(encoding="utf-8") == "héllo\nworld\n"
    assert stat.S_IMODE(p.stat().st_mode) == reporting._FILE_MODE  # not mkstemp's 0o600
    atomic_write_text(p, "second")
    assert p.read_text() == "second"
    b = atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert b.read_bytes() == b"\x00\x01"
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []
    with pytest.raises(TypeError):
        atomic_write_text(tmp_path / "c.txt", b"bytes")


def test_atomic_write_json_conversions(tmp_path):
    obj = {
        "b": np.float32(1.5), "a": np.int64(3), "arr": np.arange(3), "t": torch.tensor(2.5),
        "tt": torch.tensor([[1, 2]]), "p": Path("/x/y"), "s": {3, 1}, "flag": np.bool_(True),
        "when": dt.datetime(2024, 1, 2, 3, 4, 5),
    }
    p = atomic_write_json(tmp_path / "o.json", obj)
    text = p.read_text()
    assert json.loads(text) == {
        "a": 3, "arr": [0, 1, 2], "b": 1.5, "flag": True, "p": "/x/y", "s": [1, 3], "t": 2.5, "tt": [[1, 2]],
        "when": "2024-01-02T03:04:05",
    }
    assert text.startswith('{\n  "a": 3,') and text.endswith("}\n")  # sorted keys, indent 2
    assert list(json.loads(text)) == sorted(obj)


def test_failed_json_keeps_old_file_and_leaves_no_temp(tmp_path):
    p = atomic_write_json(tmp_path / "o.json", {"ok": 1})
    before = p.read_bytes()
    with pytest.raises(TypeError, match="object is not JSON serializable|not JSON serializable"):
        atomic_write_json(p, {"ok": 2, "bad": object()})
    assert p.read_bytes() == before and _leftovers(tmp_path) == []


def test_failure_during_write_keeps_old_file(tmp_path, monkeypatch):
    df = pd.DataFrame({"x": [1, 2], "y": [0.5, np.nan]})
    p = save_table(df, tmp_path, "t")
    before = p.read_bytes()
    assert pd.read_csv(p).equals(df)

    def broken_to_csv(self, f, **kw):
        f.write("x,y\n1,")  # partial output, then the serializer dies
        raise RuntimeError("boom")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    with pytest.raises(RuntimeError, match="boom"):
        save_table(df, tmp_path, "t")
    assert p.read_bytes() == before and _leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt), reporting._atomic_open(tmp_path / "t.csv") as f:  # BaseException too
        f.write("partial")
        raise KeyboardInterrupt
    assert p.read_bytes() == before and _leftovers(tmp_path) == []


def test_save_table_rejects_paths_as_names(tmp_path):
    with pytest.raises(ValueError, match="plain file stem"):
        save_table(pd.DataFrame({"a": [1]}), tmp_path, "../escape")


def test_package_versions():
    v = package_versions()
    assert v["torch"] == torch.__version__.split("+")[0] or v["torch"] == torch.__version__
    assert v["numpy"] == np.__version__ and v["pandas"] == pd.__version__
    assert {"transformers", "nnsight", "peft", "accelerate", "datasets", "python", "platform"} <= set(v)
    assert v["python"].count(".") == 2
    assert package_versions(["no-such-package-xyz"]) == {"no-such-package-xyz": None, "python": v["python"],
                                                         "platform": v["platform"]}


def test_new_run_dir_unique(tmp_path):
    def fixed():
        return dt.datetime(2024, 5, 6, 7, 8, 9)

    a = new_run_dir(tmp_path / "runs", clock=fixed)
    b = new_run_dir(tmp_path / "runs", prefix="nb05", clock=fixed)
    c = new_run_dir(tmp_path / "runs", prefix="nb05", clock=fixed)
    assert a.name == "20240506-070809" and a.is_dir()
    assert b.name == "nb05-20240506-070809" and c.name == "nb05-20240506-070809-1" and c.is_dir()
    assert new_run_dir(tmp_path / "r2").parent == tmp_path / "r2"
    with pytest.raises(ValueError):
        new_run_dir(tmp_path, prefix="a/b")


def _fig():
    go = pytest.importorskip("plotly.graph_objects")
    return go.Figure(go.Scatter(x=[1, 2, 3], y=[1, 4, 9], name="squares"))


def test_save_figure_html_is_self_contained(tmp_path):
    out = save_figure(_fig(), tmp_path / "run", "fig", png=False)
    assert set(out) == {"html"}
    html = out["html"].read_text()
    assert "squares" in html and len(html) > 1_000_000  # plotly.js embedded
    assert re.search(r"<script[^>]*\bsrc=", html) is None  # no external script (no CDN)
    assert _leftovers(tmp_path / "run") == []


def test_save_figure_png_when_browser_available(tmp_path):
    if find_browser() is None:
        pytest.skip("no Chrome/Chromium for kaleido (apt-get install -y chromium, or set BROWSER_PATH)")
    out = save_figure(_fig(), tmp_path, "fig", png=True)
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["html"].exists()


def test_atv_png_0_turns_png_off(tmp_path, monkeypatch):
    monkeypatch.setenv("ATV_PNG", "0")
    assert set(save_figure(_fig(), tmp_path, "fig")) == {"html"}


def test_save_figure_without_browser_warns_once(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "_png_warned", False)
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    assert find_browser() is None
    with pytest.warns(RuntimeWarning, match="PNG export skipped.*apt-get install -y chromium.*BROWSER_PATH"):
        out = save_figure(_fig(), tmp_path, "a")
    assert set(out) == {"html"} and out["html"].exists() and not (tmp_path / "a.png").exists()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(save_figure(_fig(), tmp_path, "b")) == {"html"}  # no second warning


def test_save_figure_export_error_is_a_warning(tmp_path, monkeypatch):
    pio = pytest.importorskip("plotly.io")
    monkeypatch.setattr(export, "_png_warned", False)
    monkeypatch.setattr(export, "find_browser", lambda: "/usr/bin/true")

    def broken(*a, **k):
        raise RuntimeError("browser crashed\ndetails")

    monkeypatch.setattr(pio, "to_image", broken)
    with pytest.warns(RuntimeWarning, match="RuntimeError: browser crashed"):
        out = save_figure(_fig(), tmp_path, "c")
    assert set(out) == {"html"}
    assert os.listdir(tmp_path) == ["c.html"]


def test_notebook_figures_are_json_and_html_export_adds_plotly_once(tmp_path):
    """Issue #13 item 4: outputs carry the plotly mimetype only; the HTML export inlines plotly.js (offline) once."""
    import nbformat
    import plotly.graph_objects as go
    import plotly.io as pio

    previous = pio.renderers.default
    try:
        export.setup_notebook()
        fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]), layout_title_text="t")
        bundle = fig._repr_mimebundle_(include=None, exclude=None)
    finally:
        pio.renderers.default = previous
    assert set(bundle) == {export.PLOTLY_MIME} and len(json.dumps(bundle)) < 100_000
    assert export.figure_bundle(fig)["text/plain"] == "<Figure: t>"
    nb = nbformat.v4.new_notebook()
    out = nbformat.v4.new_output("display_data", data=export.figure_bundle(fig))
    nb.cells = [nbformat.v4.new_code_cell("fig", outputs=[out]), nbformat.v4.new_code_cell("fig", outputs=[out.copy()])]
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    assert path.stat().st_size < 100_000
    from workbench.ui.notebooks import export_html

    page = export_html(path).read_text(encoding="utf-8")
    from plotly.offline import get_plotlyjs

    bundle_head = get_plotlyjs()[:200]
    assert page.count(bundle_head) == 1 and page.count("Plotly.newPlot") >= 2
    assert "window.define = undefined" in page  # plotly.js defines window.Plotly although require.js is on the page
    assert export.embed_plotly(nbformat.read(path, as_version=4)) == 2
