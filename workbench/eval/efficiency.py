"""Inference efficiency (paper Table 5): latency per item and peak memory, measured during the evaluation itself.

* **Latency** of a row = wall time of its batch (``method.prepare`` + the forward pass) / batch size; the
  evaluator stores it per row (column ``latency``, seconds) and :func:`efficiency_summary` averages it.
* **Peak memory**: on CUDA ``torch.cuda.max_memory_allocated`` (statistics reset when the measurement starts);
  on CPU the peak resident set size (RSS) of the whole process during the measured block, read from the kernel: on
  Linux the block starts by writing ``5`` to ``/proc/self/clear_refs`` (resets the high-water mark ``VmHWM`` to the
  current RSS) and ends by reading ``VmHWM`` from ``/proc/self/status``, so every page that was resident at any
  moment of the block counts, however short the spike and whatever the allocator reuses (``memory_kind``
  ``cpu_peak_rss``). Where that file is not writable (not Linux, restricted containers) a background thread samples
  RSS with psutil every ``interval`` seconds (``cpu_peak_rss_sampled``: a lower bound, it can miss short spikes).
  Both are reported as the peak and as the increase over the RSS at the start (what the block added on top of the
  loaded model). Nested measurements are correct: a block that resets the mark first hands the mark so far to the
  blocks it is nested in. Side effect: the process' own ``VmHWM`` (and ``getrusage`` ``ru_maxrss``) then count
  from the last measurement's start, not from process start.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import psutil
import torch

GIB = float(1 << 30)


_CLEAR_REFS, _STATUS = "/proc/self/clear_refs", "/proc/self/status"
_OPEN: list[PeakMemory] = []  # CPU measurements in progress (outermost first)
_LOCK = threading.Lock()


def _vm_hwm() -> int | None:
    """The kernel's peak RSS of this process (``VmHWM``, bytes) since the last reset, or None where unavailable."""
    try:
        with open(_STATUS, encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS (``echo 5 > /proc/self/clear_refs``); False where that is not possible."""
    try:
        with open(_CLEAR_REFS, "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return _vm_hwm() is not None


class PeakMemory:
    """Context manager measuring peak memory while it is open; read :attr:`result` afterwards.

    ``device``: ``"cuda"`` (or a cuda device) uses the CUDA allocator statistics (``cuda_max_memory_allocated``);
    anything else measures the process' peak RSS during the block: exactly via the kernel's ``VmHWM`` where
    ``/proc/self/clear_refs`` can reset it (``cpu_peak_rss``), else sampled every ``interval`` seconds
    (``cpu_peak_rss_sampled``, a lower bound). See the module docstring.
    """

    def __init__(self, device: str | torch.device = "cpu", interval: float = 0.005):
        self.device = torch.device(device)
        self.interval = float(interval)
        self.result: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = 0
        self._start = 0
        self._kernel = False

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self._peak = max(self._peak, proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        with _LOCK:
            mark = _vm_hwm()
            for outer in _OPEN:  # the reset below lowers the mark the enclosing blocks will read
                outer._peak = max(outer._peak, mark or 0)
            self._kernel = _reset_hwm()
            self._start = self._peak = psutil.Process().memory_info().rss
            _OPEN.append(self)
        if not self._kernel:
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak, kind = torch.cuda.max_memory_allocated(self.device), "cuda_max_memory_allocated"
        else:
            if self._thread is not None:
                self._stop.set()
                self._thread.join()
                self._thread = None
            with _LOCK:
                hwm = _vm_hwm() if self._kernel else None
                peak = max(self._peak, hwm or 0, psutil.Process().memory_info().rss)
                if self in _OPEN:
                    _OPEN.remove(self)
            kind = "cpu_peak_rss" if self._kernel else "cpu_peak_rss_sampled"
        self.result = {
            "memory_kind": kind,
            "peak_bytes": int(peak),
            "start_bytes": int(self._start),
            "increase_bytes": int(max(0, peak - self._start)),
        }


def efficiency_summary(df: pd.DataFrame, memory: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """One method's numbers: mean latency per item (over the rows of `df`) and the peak over `memory` records."""
    memory = [m for m in memory if m]
    out: dict[str, Any] = {
        "latency_s": float(df["latency"].mean()) if "latency" in df and len(df) else float("nan"),
        "n_items": len(df),
    }
    if memory:
        out["memory_kind"] = memory[0].get("memory_kind")
        out["peak_gib"] = max(m["peak_bytes"] for m in memory) / GIB
        out["increase_gib"] = max(m["increase_bytes"] for m in memory) / GIB
    return out


def _accuracy(df: pd.DataFrame, in_domain: bool, column: str = "correct") -> float:
    from workbench.eval.tables import task_groups

    mask = task_groups(df)["group"] == ("in_domain" if in_domain else "unseen")
    sub = df[mask.to_numpy()]
    if sub.empty or column not in sub:
        return float("nan")
    per_seed = sub.groupby(["seed", "task"])[column].mean().groupby("seed").mean()
    return float(per_seed.mean() * 100)


def efficiency_table(
    results: Mapping[str, pd.DataFrame] | Iterable[pd.DataFrame] | pd.DataFrame, loose: bool | None = None
) -> pd.DataFrame:
    """Paper Table 5 layout: per method Latency (s/item), peak memory (GiB), increase (GiB), ID / OOD accuracy (%),
    plus ID accuracy split into format adherence (% of rows whose prediction is a label word) x accuracy when in
    format, and the label-restricted ID accuracy.

    `results`: result DataFrames of :func:`workbench.evaluate` (one per method, with ``attrs["efficiency"]``), a
    dict name -> DataFrame, or one concatenated DataFrame (then latency comes from the rows and memory is missing).
    Accuracy is the mean over seeds of the macro average over tasks (in-domain vs unseen tasks) on the primary score
    (``primary_correct``: loose on chat prompts, strict on raw ones), as in every other table; ``loose=True`` /
    ``False`` forces the loose / strict score. ``attrs["score"]`` says which.
    """
    column, score = ("primary_correct", "primary") if loose is None else (
        ("correct_loose", "loose") if loose else ("correct", "strict"))
    if isinstance(results, pd.DataFrame):
        method_col = results["method"] if "method" in results else pd.Series("method", index=results.index)
        frames = {str(name): part for name, part in results.groupby(method_col, sort=False)}
        if len(frames) == 1 and results.attrs.get("efficiency"):
            frames = {next(iter(frames)): results}
    elif isinstance(results, Mapping):
        frames = dict(results)
    else:
        frames = {}
        for part in results:
            name = str(part["method"].iloc[0]) if "method" in part and len(part) else f"method{len(frames)}"
            frames[name] = part
    rows = []
    for name, part in frames.items():
        eff = part.attrs.get("efficiency") or efficiency_summary(part)
        rows.append({
            "method": name,
            "Latency (s)": eff.get("latency_s", float("nan")),
            "Memory (GiB)": eff.get("peak_gib", float("nan")),
            "Memory increase (GiB)": eff.get("increase_gib", float("nan")),
            "Memory kind": eff.get("memory_kind"),
            "ID Acc.": _accuracy(part, True, column if column in part else "correct"),
            "OOD Acc.": _accuracy(part, False, column if column in part else "correct"),
            **_format_split(part, column if column in part else "correct"),
        })
    table = pd.DataFrame(rows).set_index("method")
    table.attrs["score"] = score
    return table


def _format_split(df: pd.DataFrame, column: str) -> dict[str, float]:
    """In-domain format adherence (% of rows answering with a label word) and accuracy among those rows (%), so
    that ID Acc. ≈ adherence × accuracy-in-format; and the label-restricted ID accuracy (%)."""
    in_labels = "in_labels_loose" if column != "correct" and "in_labels_loose" in df else "in_labels"
    out = {"ID format (%)": float("nan"), "ID acc. in format (%)": float("nan"), "ID label Acc.": float("nan")}
    if in_labels not in df:
        return out
    from workbench.eval.tables import task_groups

    sub = df[(task_groups(df)["group"] == "in_domain").to_numpy()].dropna(subset=[in_labels])
    if sub.empty:
        return out
    fmt = sub[in_labels].astype(bool)
    out["ID format (%)"] = 100 * float(fmt.mean())
    out["ID acc. in format (%)"] = 100 * float(sub.loc[fmt, column].astype(float).mean()) if fmt.any() else 0.0
    labelled = sub.dropna(subset=["label_correct"]) if "label_correct" in sub else sub.iloc[:0]
    if not labelled.empty:
        out["ID label Acc."] = _accuracy(labelled.assign(label_correct=labelled["label_correct"].astype(float)), True,
                                         "label_correct")
    return out
