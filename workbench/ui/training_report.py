"""What notebook 01 shows about a training run, in the units its plot uses.

Module contents: :func:`accuracy_percent` (a fraction-or-% accuracy column in %), :func:`best_epoch` (the epoch of
the lowest valid loss), :func:`history_table` (the per-epoch history with valid accuracy in %, as plotted),
:func:`epoch_note` (one sentence: which epoch is saved, which had the lowest valid loss), :func:`parameter_table`
(trainable parameters with each row explained, frozen small model counted apart), :func:`training_record` (the
seconds training took, to store with the generator so notebook 02's efficiency table counts them).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from workbench.atv.epoch_choice import best_epoch as choose_epoch


def accuracy_percent(values: pd.Series) -> pd.Series:
    """Accuracies in %: a column whose finite values all lie in [0, 1] is a fraction and is multiplied by 100."""
    numeric = pd.to_numeric(values, errors="coerce")
    finite = numeric.dropna()
    return numeric * 100 if len(finite) and finite.between(0, 1).all() else numeric


def best_epoch(history: pd.DataFrame) -> int | None:
    """The epoch with the lowest ``valid_loss`` (the first on a tie), or None without valid losses: the choice
    ``TrainConfig(keep_epoch="best_valid_loss")`` makes (:func:`workbench.atv.epoch_choice.best_epoch`)."""
    if "valid_loss" not in history or "epoch" not in history:
        return None
    if pd.to_numeric(history["valid_loss"], errors="coerce").notna().sum() == 0:
        return None
    return choose_epoch(history[["epoch", "valid_loss"]].to_dict("records"), "best_valid_loss")


def history_table(history: pd.DataFrame) -> pd.DataFrame:
    """The history as 01 shows it: ``valid_acc`` replaced by ``valid acc. (%)`` (the plot's unit), losses rounded."""
    table = history.copy()
    if "valid_acc" in table:
        position = list(table.columns).index("valid_acc")
        percent = accuracy_percent(table.pop("valid_acc")).round(1)
        table.insert(position, "valid acc. (%)", percent)
    for col in ("train_loss", "valid_loss"):
        if col in table:
            table[col] = pd.to_numeric(table[col], errors="coerce").round(4)
    for col in ("seconds", "examples_per_s"):
        if col in table:
            table[col] = pd.to_numeric(table[col], errors="coerce").round(1)
    return table


def epoch_note(history: pd.DataFrame, saved_epoch: int | None = None) -> str:
    """Which epoch the saved generator holds (`saved_epoch`; default ``history.attrs["kept_epoch"]``, what
    ``TrainConfig.keep_epoch`` chose, else the last) and which had the lowest valid loss; says so plainly when they
    differ."""
    if history.empty:
        return "no epoch was trained"
    last = int(history["epoch"].iloc[-1])
    kept = history.attrs.get("kept_epoch") if saved_epoch is None else saved_epoch
    saved = last if kept is None else int(kept)
    best = best_epoch(history)
    text = f"saved: the generator after epoch {saved}" + (" (the last)" if saved == last else "")
    if best is None:
        return text + "; no validation loss was recorded (valid_items = 0)"
    losses = history.set_index("epoch")["valid_loss"]
    if best == saved:
        return text + f", which has the lowest valid loss ({losses[best]:.4f})"
    rose = f": the valid loss rose after epoch {best}" if best < saved else ""
    return (text + f"; the lowest valid loss was after epoch {best} ({losses[best]:.4f}, "
            f"{losses[saved]:.4f} at epoch {saved}){rose}")


def parameter_table(generator: Any, lm: Any, lora_r: int = 8) -> pd.DataFrame:
    """Parameter counts with what each row counts (the generator's own ``parameter_report`` calls its first row
    "this"): trained here, the small model when frozen (not trained, not counted above), full ATV, LoRA."""
    report = generator.parameter_report(lm, lora_r=lora_r)
    counts = list(report.values())
    trainable = int(counts[0])
    total = sum(p.numel() for p in generator.parameters())
    frozen = total - trainable
    rows = [("trained here (this generator)", trainable,
             "what training updates: the projection to L×d vectors, plus the small model's weights unless frozen")]
    if frozen:
        rows.append(("small model, frozen", frozen,
                     "the small model's weights when it is frozen: used, not trained, not counted above"))
    labels = {1: ("full ATV (small model fine-tuned)", "the small model and the projection, all trained"),
              2: (f"LoRA r={lora_r}", "LoRA of rank r on the large model's query/value projections, for scale")}
    for i, (key, value) in enumerate(report.items()):
        if i in labels:
            rows.append((labels[i][0], int(value), labels[i][1]))
    return pd.DataFrame(rows, columns=["parameters", "count", "what is counted"]).set_index("parameters")


def training_record(history: pd.DataFrame) -> dict[str, Any]:
    """``{"seconds": …, "epochs": …, "prefix_seconds": …}`` of a training history (epochs' seconds summed, plus the
    prefix cache's seconds from ``history.attrs`` when recorded): what notebook 01 stores in ``generator.json`` as
    the generator's fit time."""
    seconds = float(pd.to_numeric(history.get("seconds", pd.Series(dtype=float)), errors="coerce").sum())
    prefix = float((history.attrs.get("prefix_cache") or {}).get("seconds") or 0.0)
    total = seconds + prefix
    return {"seconds": round(total, 3) if math.isfinite(total) else None, "epochs": int(len(history)),
            "prefix_seconds": round(prefix, 3)}
