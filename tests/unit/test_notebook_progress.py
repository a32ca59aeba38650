"""workbench.ui.progress: notebook progress bars are HTML in one output updated by id, never an ipywidget, so a
notebook saved mid-run reopens without "model not found" (issue 21, point 2)."""

from __future__ import annotations

import sys
import types

import pytest
import tqdm.auto
import tqdm.autonotebook

from workbench.ui import progress

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


class Handle:
    def __init__(self, display_id: str):
        self.display_id = display_id


@pytest.fixture
def published(monkeypatch) -> list[tuple[bool, dict]]:
    """Every display / update a bar sends, as (update?, bundle)."""
    sent: list[tuple[bool, dict]] = []

    def fake(bundle, display_id=None, update=False):
        sent.append((update, dict(bundle)))
        return Handle(f"board-{len(sent)}")

    monkeypatch.setattr(progress, "_display", fake)
    monkeypatch.setattr(progress.NotebookBar, "_board", None)
    return sent


def test_nested_bars_share_one_html_output_and_leave_no_widget(published):
    with progress.NotebookBar(total=2, desc="methods", leave=False) as outer:
        for _ in range(2):
            for _ in progress.NotebookBar(range(3), desc="task", leave=False, mininterval=0):
                pass
            outer.update()
    new_outputs = [b for update, b in published if not update]
    assert len(new_outputs) == 1, "nested bars must share one output (one board)"
    updates = [b for update, b in published if update]
    assert any("task: 3/3" in b.get("text/plain", "") and "methods: 0/2" in b["text/plain"] for b in updates)
    assert any('class="atv-progress"' in b.get("text/html", "") for b in updates)
    assert all(WIDGET_MIME not in b for _, b in published)
    assert updates[-1] == {"text/plain": ""}  # leave=False bars are gone once all closed
    assert progress.NotebookBar._board is None


def test_a_kept_bar_keeps_its_final_line(published):
    for _ in progress.NotebookBar(range(4), desc="epochs", leave=True):
        pass
    assert "epochs: 4/4" in published[-1][1]["text/plain"]


def test_disabled_bars_draw_nothing(published):
    for _ in progress.NotebookBar(range(3), disable=True):
        pass
    assert published == []


@pytest.mark.parametrize("desc, shown", [
    ("atv + atv + atv", "atv ×3"),
    ("zero-shot + atv + atv", "zero-shot + atv ×2"),
    ("glue_sst2", "glue_sst2"),
])
def test_repeated_method_names_are_counted(desc, shown):
    assert progress.short_description(desc) == shown


def test_long_descriptions_are_cut():
    many = " + ".join(f"method{i}" for i in range(30))
    assert progress.short_description(many) == "30 methods"
    assert len(progress.short_description("x" * 200)) == progress.MAX_DESCRIPTION


def test_use_notebook_bars_rebinds_tqdm_auto_and_workbench_modules(monkeypatch):
    original = tqdm.auto.tqdm
    monkeypatch.setattr(tqdm.auto, "tqdm", original)  # restored after the test
    monkeypatch.setattr(tqdm.autonotebook, "tqdm", tqdm.autonotebook.tqdm)
    fake = types.ModuleType("workbench._fake_progress_user")
    fake.tqdm = original
    other = types.ModuleType("elsewhere_fake_progress_user")
    other.tqdm = original
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setitem(sys.modules, other.__name__, other)
    for name, module in list(sys.modules.items()):  # the real workbench modules get their bars back afterwards
        if name.startswith("workbench.") and hasattr(module, "tqdm"):
            monkeypatch.setattr(module, "tqdm", module.tqdm)
    assert progress.use_notebook_bars() is False  # not in a kernel: nothing changes
    assert tqdm.auto.tqdm is original
    assert progress.use_notebook_bars(force=True) is True
    assert tqdm.auto.tqdm is progress.NotebookBar and fake.tqdm is progress.NotebookBar
    assert other.tqdm is original  # only workbench modules are touched


def test_the_rebinding_is_undone_after_the_test():
    """(runs after the test above in file order) the package's own modules draw their usual bars again."""
    import workbench.eval.evaluate as evaluate

    assert evaluate.tqdm is not progress.NotebookBar and tqdm.auto.tqdm is not progress.NotebookBar
