"""Every notebook runs top to bottom headless via papermill with tiny parameters (a tiny model saved in the test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.core.testing import tiny_model
from workbench.ui.notebooks import DEMO_NOTEBOOKS, run_notebook

pytestmark = pytest.mark.notebook
TASKS = ["glue_sst2", "superglue_rte"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nb-run")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random Llama with a word-level tokenizer, saved as a Hugging Face folder (what hub ids load through)."""
    from workbench.tasks.registry import load_task

    texts = [item.input for name in TASKS for item in load_task(name).train[:30]]
    lm = tiny_model("llama", texts=texts, max_position_embeddings=4096)
    folder = tmp_path_factory.mktemp("tiny-llama")
    lm.hf.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return str(folder)


COMMON = {"encoder": "scratch:2x32", "seed": 1}
PARAMS = {
    "01_train_generator.ipynb": {"tasks": TASKS, "n_train": 4, "epochs": 2, "lam": 0.5, "batch_size": 2},
    "02_static_vs_adaptive.ipynb": {"unseen_tasks": ["glue_cola"], "n_test": 2, "epochs": 1, "n_train": 4},
    "03_lambda_and_depth.ipynb": {"n_test": 2, "lambdas": [0.1, 1.0]},
    "04_vector_geometry.ipynb": {"n_test": 6, "k": 2, "n_prompts": 2},
}


@pytest.mark.parametrize("name", DEMO_NOTEBOOKS)
def test_notebook_runs(name, run_dir, tiny_model_dir):
    if name != DEMO_NOTEBOOKS[0] and not (run_dir / "generator").exists():
        pytest.skip("needs the generator notebook 01 writes")
    info = run_notebook(name, run_dir, {"model": tiny_model_dir, **COMMON, **PARAMS[name]})
    assert Path(info["executed"]).exists() and Path(info["html"]).exists()
    written = {p.name for p in run_dir.iterdir()}
    prefix = name[:2]
    assert any(f.startswith(prefix) and f.endswith(".html") and f != name.replace(".ipynb", ".html") for f in written), written
    assert any(f.startswith(prefix) and f.endswith(".csv") for f in written), written


def test_generator_and_results_recorded(run_dir):
    if not (run_dir / "01_config.json").exists():
        pytest.skip("notebook 01 did not run")
    config = json.loads((run_dir / "01_config.json").read_text())
    assert config["train_config"]["epochs"] == 2 and "torch" in config["versions"]


def test_lora_equivalence_notebook(tmp_path):
    info = run_notebook("05_lora_equivalence.ipynb", tmp_path, {"n_trials": 2, "d": 32, "d_s_values": [2, 4]})
    assert Path(info["html"]).exists()
    assert (tmp_path / "equivalence_summary.csv").exists()
