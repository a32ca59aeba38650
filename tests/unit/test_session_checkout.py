"""Notebook run folders follow the checkout of the notebook that runs, not the one the package was installed from."""

from __future__ import annotations

from pathlib import Path

from workbench.core.files import repo_root
from workbench.ui import session


def make_checkout(root: Path) -> Path:
    (root / "notebooks").mkdir(parents=True)
    (root / "workbench").mkdir()
    (root / "workbench" / "__init__.py").write_text("")
    return root


def test_a_second_checkout_gets_its_own_run_folders(tmp_path, monkeypatch):
    other = make_checkout(tmp_path / "other-checkout")
    monkeypatch.chdir(other / "notebooks")  # where JupyterLab starts the kernel of other/notebooks/01_*.ipynb
    assert session.base_dir() == other.resolve()
    assert session.run_folder("runs/x", create=False) == other.resolve() / "runs" / "x"
    assert repo_root() != other.resolve()


def test_outside_any_checkout_the_package_checkout_is_the_fallback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = repo_root()
    expected = root if session.is_checkout(root) else tmp_path.resolve()
    assert session.base_dir() == expected


def test_a_folder_with_notebooks_but_no_package_is_not_a_checkout(tmp_path):
    (tmp_path / "notebooks").mkdir()
    assert not session.is_checkout(tmp_path)
    assert session.is_checkout(make_checkout(tmp_path / "c"))
