"""Notebooks 01–04 in a real JupyterLab, driven in headless Chromium (issues #13, #21), on tiny models.

01: the live loss curve gains a point after every epoch while the cell runs; a copy saved mid-run (progress bars on
screen) holds no widget output and reopens without "model not found". 02: the same for a file saved mid-run, plus
the "too small to tell the methods apart" sentence and no stray output. 03: the panel answers the keyboard. 04: the
figures render. The browser console has no errors in any of them.

Installs nothing: it needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them as root) and
selenium (the dev extra); without them it is skipped with the reason, or fails when ``ATV_REQUIRE_BROWSER=1`` (CI).
JupyterLab listens on a free port of 127.0.0.1 only, with the project's settings (``jupyter/lab/settings``) and
throw-away user, runtime and data folders. Every wait is on a condition (an element, a text) with a generous limit.
``ATV_SCREENSHOT_DIR=folder`` also saves the screenshots there (the README's comes from this test).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from workbench.core.files import repo_root
from workbench.ui.notebooks import NOTEBOOK_DIR

pytestmark = pytest.mark.browser

REPO = repo_root()
TASKS = ["glue_sst2", "superglue_rte"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1000"]
LONG = 600  # s: limit of waits that include running cells on a loaded 2-core machine
CURVE_EPOCHS = 4  # epochs of notebook 01 here: its live curve must show 1, 2, 3, ... points while the cell runs
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
MODEL_NOT_FOUND = ("model not found", "Error displaying widget")


def unavailable(reason: str) -> None:
    if os.environ.get("ATV_REQUIRE_BROWSER") == "1":
        pytest.fail(f"ATV_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def wait_for(condition, timeout: float, what: str, interval: float = 0.25):
    """Poll `condition()` until it returns something truthy (returned) or fail after `timeout` s naming `what`."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as err:  # e.g. an element re-rendered while read; try again
            last_error = err
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error else ""
    pytest.fail(f"timed out after {timeout} s waiting for {what}" + detail)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    """A tiny Llama saved as a folder and a generator trained on it for one epoch: what notebooks 03/04 read."""
    import workbench as wb
    from workbench.atv.training import TrainConfig
    from workbench.core.encoders import load_encoder
    from workbench.core.testing import tiny_model

    texts = [item.input for name in TASKS for item in wb.load_task(name).train[:30]]
    lm = tiny_model("llama", texts=texts, max_position_embeddings=4096)
    model_dir = tmp_path_factory.mktemp("tiny-llama")
    lm.hf.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    lm = wb.load_model(str(model_dir))
    generator = wb.ATVGenerator(load_encoder("scratch:2x32", tokenizer=lm.tokenizer, seed=1), lm)
    config = TrainConfig(epochs=1, n_train=4, batch_size=2, scale=0.5, seed=1, valid_items=2)
    wb.train_atv(lm, generator, [wb.load_task(t) for t in TASKS], config, progress=False)
    run_dir = tmp_path_factory.mktemp("browser-run")
    generator.save(run_dir / "generator", tasks=TASKS)
    return {"model": str(model_dir), "run_dir": str(run_dir)}


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_run):
    """JupyterLab on 127.0.0.1 (free port) serving parameterized copies of notebooks 01–04 (01 trains into a run
    folder of its own; 02–04 read the generator of :func:`tiny_run`)."""
    if not (CHROMIUM and DRIVER):
        unavailable("no chromium + chromedriver on PATH (Debian: apt-get install -y chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        unavailable("selenium is not installed (pip install -e '.[dev]')")
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    home = tmp_path_factory.mktemp("lab")
    root = home / "root"
    root.mkdir()
    common = {"model": tiny_run["model"], "run_dir": tiny_run["run_dir"], "seed": 1}
    params = {"01_train_generator.ipynb": {"encoder": "scratch:2x32", "tasks": TASKS, "n_train": 8,
                                           "epochs": CURVE_EPOCHS, "lam": 0.5, "batch_size": 2,
                                           "run_dir": str(home / "run-01")},
              "02_static_vs_adaptive.ipynb": {"unseen_tasks": ["glue_cola"], "n_test": 2, "n_icl": 1, "k": 2,
                                              "epochs": 1, "n_train": 4},
              "03_lambda_and_depth.ipynb": {"n_test": 2, "lambdas": [0.25, 1.0]},
              "04_vector_geometry.ipynb": {"n_test": 6, "k": 2, "n_prompts": 2}}
    for name, extra in params.items():
        nb = parameterize_notebook(load_notebook_node(str(NOTEBOOK_DIR / name)), {**common, **extra},
                                   language="python")
        nbformat.write(nb, root / name)
    token = secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_DATA_DIR": str(home / "data"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "ATV_PNG": "0", "JUPYTER_PLATFORM_DIRS": "1"}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0",
           "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
           f"--IdentityProvider.token={token}",
           f"--LabApp.app_settings_dir={REPO / 'jupyter' / 'lab' / 'settings'}",
           f"--LabApp.user_settings_dir={home / 'user-settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}",
           *(["--allow-root"] if os.getuid() == 0 else [])]
    log = open(home / "server.log", "w")  # closed in the teardown
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=root)

    def server_info():
        assert proc.poll() is None, f"JupyterLab exited: {(home / 'server.log').read_text()[-3000:]}"
        files = list((home / "runtime").glob(f"jpserver-{proc.pid}.json"))
        return json.loads(files[0].read_text()) if files else None

    try:
        info = wait_for(server_info, 180, "JupyterLab's server file")
        base = f"http://127.0.0.1:{info['port']}"
        wait_for(lambda: urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=10).status == 200,
                 120, "JupyterLab to answer")
        yield {"base": base, "token": token, "root": root, "log": home / "server.log", "home": home}
    finally:
        try:
            req = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")  # also stops kernels
            urllib.request.urlopen(req, timeout=30)
            proc.wait(timeout=60)
        except Exception:  # fall back to killing the server's process group
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def driver(lab):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={lab['home'] / 'chromium-profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    browser.set_page_load_timeout(180)
    browser.set_script_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()


def screenshot(driver, lab, name: str) -> Path:
    path = lab["home"] / f"{name}.png"
    driver.save_screenshot(str(path))
    if os.environ.get("ATV_SCREENSHOT_DIR"):
        target = Path(os.environ["ATV_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


def console_errors(driver) -> list[str]:
    """SEVERE browser-console entries since the last call; saves the notebook first (a page with unsaved changes
    logs a blocked 'beforeunload' dialog when the next test navigates away)."""
    driver.execute_script("return window.jupyterapp.commands.execute('docmanager:save').then(() => true);")
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


KERNEL_READY = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!w || !w.context || w.context.path !== arguments[0]) return false;
const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
return !!k && k.connectionStatus === 'connected' && k.status === 'idle' && !w.sessionContext.pendingInput;
"""

# the notebook in front (other tabs stay in the DOM)
CURRENT = "const root = window.jupyterapp.shell.currentWidget.node;"

ALL_DONE = CURRENT + """
const cells = [...root.querySelectorAll('.jp-Notebook .jp-CodeCell')];
const errors = [...root.querySelectorAll('.jp-OutputArea-output')]
  .filter(o => /Traceback|Error:/.test(o.textContent) && o.closest('.jp-OutputArea-child'))
  .map(o => o.textContent.slice(0, 2000));
if (errors.length) return {errors};
const prompt = c => (c.querySelector('.jp-InputPrompt') || {}).textContent || '';
const done = cells.length > 0 && cells.every(c => /\\[\\d+\\]/.test(prompt(c)));
const busy = root.querySelector('.jp-Notebook-ExecutionIndicator[data-status="busy"]');
return done && !busy ? {done: cells.length} : null;
"""


def open_notebook(driver, lab, name: str) -> None:
    """Open `name` in JupyterLab and wait until its cells are shown."""
    from selenium.webdriver.common.by import By

    # save what is in front first: leaving a page with unsaved changes logs a blocked 'beforeunload' dialog, which
    # the next test's console check would blame on its own notebook
    driver.execute_script("const app = window.jupyterapp; if (!app || !app.shell.currentWidget) return true;"
                          "return app.commands.execute('docmanager:save').then(() => true, () => true);")
    driver.get(f"{lab['base']}/lab/tree/{name}?token={lab['token']}")
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell"), 180, f"{name} to open")
    wait_for(lambda: driver.execute_script("const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                                           "return !!w && !!w.context && w.context.path === arguments[0];", name),
             120, f"{name} to be the notebook in front")


def start_run_all(driver, lab, name: str) -> None:
    """Open `name`, wait for its kernel, Run > Run All Cells (returns at once)."""
    from selenium.webdriver.common.by import By

    open_notebook(driver, lab, name)
    wait_for(lambda: driver.execute_script(KERNEL_READY, name), 300, f"the kernel of {name} to be connected and idle")
    assert not driver.find_elements(By.XPATH, "//*[contains(text(), 'official Jupyter news')]"), "news pop-up shown"
    # Run > Run All Cells, through JupyterLab's command registry (the app is exposed with expose_app_in_browser)
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells'); return true;")


def open_and_run_all(driver, lab, name: str, started: bool = False) -> None:
    """Open `name` in JupyterLab, wait for its kernel, Run > Run All Cells, wait until every cell has run
    (`started`: Run All was already started by :func:`start_run_all`)."""
    if not started:
        start_run_all(driver, lab, name)
    try:
        state = wait_for(lambda: driver.execute_script(ALL_DONE), LONG, f"every cell of {name} to run")
    except BaseException:
        shot = screenshot(driver, lab, f"failed-{name[:2]}")
        prompts = driver.execute_script(CURRENT + "return [...root.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
                                        ".map(p => p.textContent);")
        print(f"prompts: {prompts}; screenshot: {shot}; console: {console_errors(driver)}")
        raise
    assert "errors" not in state, f"{name}: error output:\n" + "\n---\n".join(state["errors"])


def panel_plot_data(driver) -> str | None:
    return driver.execute_script(
        "const p = document.querySelector('.widget-output .js-plotly-plot');"
        "return p && p.data ? JSON.stringify(p.data.map(t => [t.name, t.x, t.y])) : null;")


def panel_status(driver) -> str:
    return driver.execute_script(
        "const h = [...document.querySelectorAll('.widget-html-content')].map(e => e.textContent)"
        ".filter(t => t.includes('λ=')); return h.length ? h[h.length - 1] : '';")


def test_notebook_03_panel_responds_to_the_keyboard(driver, lab):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    open_and_run_all(driver, lab, "03_lambda_and_depth.ipynb")
    status = wait_for(lambda: "evaluation 1" in panel_status(driver) and panel_status(driver), LONG,
                      "the panel's first evaluation")
    before = wait_for(lambda: panel_plot_data(driver), 120, "the panel's plot to render")
    handle = driver.execute_script(
        "const s = [...document.querySelectorAll('.widget-hslider, .widget-slider')]"
        ".find(e => (e.querySelector('.widget-label') || {}).textContent === 'λ');"
        "const h = s && s.querySelector('.noUi-handle'); if (h) { h.scrollIntoView({block: 'center'}); h.focus(); }"
        "return h;")
    assert handle is not None, "no λ slider handle in the panel"
    ActionChains(driver).send_keys(Keys.ARROW_RIGHT).perform()
    after = wait_for(lambda: "evaluation 2" in panel_status(driver) and panel_status(driver), LONG,
                     "the panel's status line to show the second evaluation")
    assert after != status and "accuracy" in after
    changed = wait_for(lambda: (panel_plot_data(driver) or before) != before and panel_plot_data(driver), 120,
                       "the panel's plot to change")
    assert len(json.loads(changed)) >= 1
    driver.execute_script("const s = [...document.querySelectorAll('.widget-vbox')]"
                          ".find(e => e.querySelector('.noUi-handle'));"
                          "if (s) s.scrollIntoView({block: 'start'});")
    screenshot(driver, lab, "notebook03-panel")
    errors = console_errors(driver)
    assert errors == [], errors


def test_notebook_04_figures_render(driver, lab):
    open_and_run_all(driver, lab, "04_vector_geometry.ipynb")
    rendered = wait_for(lambda: driver.execute_script(
        CURRENT + "const ps = [...root.querySelectorAll("
        "'.jp-OutputArea-output.js-plotly-plot, .jp-OutputArea-output .js-plotly-plot')];"
        "return ps.length >= 3 && ps.every(p => p.querySelector('.main-svg') "
        "&& p.querySelector('.scatterlayer .trace, .heatmaplayer .hm, .heatmaplayer image'))"
        " ? ps.length : 0;"), 180, "notebook 04's figures (maps, norms, logit lens) to render")
    assert rendered >= 3
    screenshot(driver, lab, "notebook04-figures")
    errors = console_errors(driver)
    assert errors == [], errors


# ---------------------------------------------------------------------------------------------- 01 and 02
RUNNING_CELL = CURRENT + """
const cell = [...root.querySelectorAll('.jp-Notebook .jp-CodeCell')]
  .find(c => (c.querySelector('.jp-InputArea-editor') || {textContent: ''}).textContent.includes(arguments[0]));
if (!cell) return null;
const prompt = (cell.querySelector('.jp-InputPrompt') || {}).textContent || '';
return {running: prompt.includes('*'), progress: cell.querySelectorAll('.atv-progress').length,
        widgets: cell.querySelectorAll('.jupyter-widgets, .widget-output').length};
"""

# every 50 ms: the number of points of 01's live curve while its cell runs (window.__atvCurve)
WATCH_CURVE = CURRENT + """
window.__atvCurve = [];
clearInterval(window.__atvWatch);
window.__atvWatch = setInterval(() => {
  const cell = [...root.querySelectorAll('.jp-Notebook .jp-CodeCell')]
    .find(c => (c.querySelector('.jp-InputArea-editor') || {textContent: ''}).textContent.includes('LiveFigure('));
  if (!cell) return;
  const running = ((cell.querySelector('.jp-InputPrompt') || {}).textContent || '').includes('*');
  const plot = cell.querySelector('.js-plotly-plot');
  const trace = plot && plot._fullData && plot._fullData.find(t => t.name === 'train loss');
  if (running && trace) {
    const n = trace._length || (trace.x && trace.x.length) || 0;
    if (window.__atvCurve[window.__atvCurve.length - 1] !== n) window.__atvCurve.push(n);
  }
}, 50);
return true;
"""


def saved_copy(driver, lab, name: str, copy: str) -> dict:
    """Save the notebook in front now (as JupyterLab's autosave would) and copy the file to `copy`; returns the
    saved notebook's JSON."""
    driver.execute_script("return window.jupyterapp.commands.execute('docmanager:save').then(() => true);")
    text = (lab["root"] / name).read_text(encoding="utf-8")
    (lab["root"] / copy).write_text(text, encoding="utf-8")
    return json.loads(text)


def widget_outputs(nb: dict) -> list[str]:
    return ["".join(c["source"])[:80] for c in nb["cells"] if c["cell_type"] == "code"
            for o in c.get("outputs", []) if WIDGET_MIME in o.get("data", {})]


def save_mid_run(driver, lab, name: str, marker: str) -> dict:
    """Wait until the cell whose source holds `marker` runs with its HTML progress bars on screen, then save a copy
    of the notebook (``<stem>-saved-mid-run.ipynb``); returns its JSON."""
    state = wait_for(lambda: (lambda s: s if s and s["running"] and s["progress"] else None)(
        driver.execute_script(RUNNING_CELL, marker)), LONG, f"the progress bars of {name} while `{marker}` runs")
    assert state["widgets"] == 0, f"{name}: ipywidgets on screen while `{marker}` runs: {state}"
    copy = name.replace(".ipynb", "-saved-mid-run.ipynb")
    nb = saved_copy(driver, lab, name, copy)
    assert widget_outputs(nb) == [], f"{name} saved mid-run holds widget outputs: {widget_outputs(nb)}"
    assert any("atv-progress" in json.dumps(o.get("data", {})) for c in nb["cells"] for o in c.get("outputs", [])), \
        f"{name} saved mid-run: the progress bars are not in the file"
    return nb


def reopen_shows_no_widget_error(driver, lab, copy: str) -> None:
    """Open the copy saved mid-run: every output renders, none says "model not found"."""
    open_notebook(driver, lab, copy)
    wait_for(lambda: driver.execute_script(CURRENT + "return root.querySelectorAll('.jp-OutputArea-output').length;"),
             120, f"the outputs of {copy} to render")
    time.sleep(2)  # the widget manager reports a missing model right after the output renders
    text = driver.execute_script(CURRENT + "return [...root.querySelectorAll('.jp-OutputArea-output')]"
                                           ".map(o => o.textContent).join('\\n');")
    assert not any(m in text for m in MODEL_NOT_FOUND), f"{copy} reopened shows a widget error:\n{text[:3000]}"
    driver.execute_script(CURRENT + "const p = root.querySelector('.atv-progress');"
                                    "if (p) p.scrollIntoView({block: 'center'}); return true;")
    screenshot(driver, lab, f"reopened-{copy[:2]}-saved-mid-run")


def test_notebook_01_curve_is_live_and_a_mid_run_save_reopens_clean(driver, lab):
    name = "01_train_generator.ipynb"
    start_run_all(driver, lab, name)
    driver.execute_script(WATCH_CURVE)
    wait_for(lambda: driver.execute_script("return (window.__atvCurve || []).length;"), LONG,
             "the first point of 01's live curve")
    nb = save_mid_run(driver, lab, name, "LiveFigure(")
    assert any(PLOTLY_MIME in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", [])), \
        "the live curve is not in the file saved mid-run"
    open_and_run_all(driver, lab, name, started=True)
    curve = driver.execute_script("clearInterval(window.__atvWatch); return window.__atvCurve;")
    # one more point after every epoch while the cell ran (the plotly renderer used to freeze after the first)
    # (how many of them the 50 ms watcher sees depends on the machine's load: at least two, growing)
    assert len(curve) >= 2 and curve == sorted(set(curve)) and curve[0] >= 1, curve
    assert max(curve) >= CURVE_EPOCHS - 1, curve
    print(f"notebook 01: points of the live curve seen while the cell ran: {curve}")
    done = driver.execute_script(CURRENT + "return root.textContent;")
    assert "saved: the generator after epoch" in done and "valid acc. (%)" in done
    driver.execute_script(CURRENT + "const p = [...root.querySelectorAll('.js-plotly-plot')].pop();"
                                    "if (p) p.scrollIntoView({block: 'start'}); return true;")
    screenshot(driver, lab, "notebook01-curve")
    errors = console_errors(driver)
    assert errors == [], errors
    reopen_shows_no_widget_error(driver, lab, name.replace(".ipynb", "-saved-mid-run.ipynb"))
    errors = console_errors(driver)
    assert errors == [], errors


def test_notebook_02_tables_and_a_mid_run_save_reopens_clean(driver, lab):
    name = "02_static_vs_adaptive.ipynb"
    start_run_all(driver, lab, name)
    save_mid_run(driver, lab, name, "compare.compare(")
    open_and_run_all(driver, lab, name, started=True)
    text = driver.execute_script(CURRENT + "return root.textContent;")
    assert "too small to tell the methods apart" in text and "make study" in text
    assert "PosixPath(" not in text, "a path is shown as a cell's output"
    assert "Fit (what)" in text and "△/▽" in text
    final = saved_copy(driver, lab, name, name.replace(".ipynb", "-final.ipynb"))
    assert widget_outputs(final) == []
    driver.execute_script(CURRENT + "const m = [...root.querySelectorAll('.jp-OutputArea-output')]"
                                    ".find(o => o.textContent.includes('too small to tell'));"
                                    "if (m) m.scrollIntoView({block: 'start'}); return true;")
    screenshot(driver, lab, "notebook02-tables")
    errors = console_errors(driver)
    assert errors == [], errors
    reopen_shows_no_widget_error(driver, lab, name.replace(".ipynb", "-saved-mid-run.ipynb"))
    errors = console_errors(driver)
    assert errors == [], errors
