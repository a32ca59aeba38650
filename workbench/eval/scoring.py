"""Scoring next-token predictions: the official first-token accuracy and the paper's reliability measures.

* **Garbage logits**: a row whose logits contain NaN/inf, or are all equal (e.g. an intervention so strong that the
  model's output collapsed), has no prediction: ``bad_logits`` is True, ``prediction`` / ``label_prediction`` are
  None and ``correct`` / ``label_correct`` / ``in_labels`` are False (an argmax over such a row is the first index,
  which would otherwise count as predicting the first label).
* **Accuracy** (official ATV / ELICIT): the argmax of the last-position logits over the *full* vocabulary equals
  the first token of the answer ``" " + output``.
* **Label accuracy**: the argmax restricted to the task's label tokens equals the target.
* **Format adherence** (paper Table 14): share of items whose full-vocabulary argmax is one of the label tokens.
* **Consistency** (paper Table 15, the SCORE consistency rate): for each item (and seed), the share of pairs of
  prompt variants (3 templates x 3 prefixes -> 36 pairs) whose predictions agree, averaged over items::

      CR = mean_items [ 1 / C(n, 2) * sum_{i<j} 1[pred_i == pred_j] ]

  Items seen under fewer than 2 variants are skipped.

Target tokens: the official ``get_answer_id(query, answer)`` takes the tokens that ``query + answer`` has beyond
``query``. ``target_first_token(tokenizer, output, prompt=...)`` does exactly that when given the prompt; without it,
it encodes ``" " + output`` without special tokens, and if the first piece is a bare space (SentencePiece
tokenizers such as Llama-2 / Mistral split " A" into "▁" + "A" when encoded alone) it encodes it after ``"A:"``
instead, which is what the token is in context.

One result row's scores: :func:`score_row` (official, loose and label-restricted), with :class:`AnswerTokens`
(target tokens cached on the prompt's end).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from workbench.core.inference import bad_logit_rows
from workbench.tasks.answers import target_first_token

if TYPE_CHECKING:
    from workbench.tasks.registry import Task


def score_logits(
    logits: torch.Tensor, target_ids: Sequence[int] | torch.Tensor, label_ids: Sequence[int] | None = None
) -> dict[str, list]:
    """Per-row records from ``[B, V]`` last-position logits.

    Returns lists of length B: ``bad_logits`` (see the module docstring), ``prediction`` (full-vocabulary argmax id),
    ``correct``, and, when `label_ids` is given and non-empty, ``label_prediction`` (id of the best label token),
    ``label_correct`` and ``in_labels`` (prediction is a label token); without labels these are None. Rows with bad
    logits have prediction / label_prediction None and every score False.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, V], got shape {tuple(logits.shape)}")
    targets = torch.as_tensor(target_ids, dtype=torch.long).reshape(-1).cpu()
    if targets.numel() != logits.shape[0]:
        raise ValueError(f"{targets.numel()} target ids for {logits.shape[0]} rows of logits")
    logits = logits.detach().float().cpu()
    bad = bad_logit_rows(logits).tolist()
    pred = logits.argmax(dim=-1)
    b = logits.shape[0]
    out: dict[str, list] = {"bad_logits": bad, "prediction": pred.tolist(), "correct": (pred == targets).tolist()}
    if label_ids is not None and len(label_ids) > 0:
        lab = torch.as_tensor(list(label_ids), dtype=torch.long)
        if int(lab.max()) >= logits.shape[1] or int(lab.min()) < 0:
            raise ValueError(f"label ids {lab.tolist()} out of range for a vocabulary of {logits.shape[1]}")
        lab_pred = lab[logits[:, lab].argmax(dim=-1)]
        out["label_prediction"] = lab_pred.tolist()
        out["label_correct"] = (lab_pred == targets).tolist()
        out["in_labels"] = torch.isin(pred, lab).tolist()
    else:
        out["label_prediction"] = [None] * b
        out["label_correct"] = [None] * b
        out["in_labels"] = [None] * b
    for i in (i for i in range(b) if bad[i]):
        out["prediction"][i], out["correct"][i] = None, False
        if out["label_prediction"][i] is not None:
            out["label_prediction"][i], out["label_correct"][i], out["in_labels"][i] = None, False, False
    return out


def _pair_agreement(preds: pd.Series) -> float:
    n = len(preds)
    if n < 2:
        return float("nan")
    counts = preds.value_counts()
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


def item_consistency(df: pd.DataFrame) -> pd.DataFrame:
    """Per (task, item, seed) agreement rate over variant pairs (columns task, item, [seed], prediction)."""
    missing = {"task", "item", "prediction"} - set(df.columns)
    if missing:
        raise ValueError(f"consistency needs columns task, item, prediction (and optionally seed); missing {missing}")
    keys = ["task", "item"] + (["seed"] if "seed" in df.columns else [])
    g = df.groupby(keys, sort=True)["prediction"]
    res = g.apply(_pair_agreement).rename("consistency").reset_index()
    res["n_variants"] = g.size().to_numpy()
    return res[res["n_variants"] >= 2].reset_index(drop=True)


def consistency_by_task(df: pd.DataFrame) -> pd.Series:
    """SCORE consistency rate per task (mean over items and seeds)."""
    return item_consistency(df).groupby("task")["consistency"].mean()


class AnswerTokens:
    """First token of ``" " + output`` after a prompt (``target_first_token``), cached on the prompt's end."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[tuple[str, str], int] = {}

    def __call__(self, output: str, prompt: str) -> int:
        key = (prompt[-64:], output)  # the token only depends on the prompt's end
        if key not in self._cache:
            self._cache[key] = target_first_token(self.tokenizer, output, prompt=prompt)
        return self._cache[key]

    def decode(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.tokenizer.decode([int(token_id)])


def score_row(answers: AnswerTokens, task: Task, item: Any, prompt: str, logits: torch.Tensor) -> dict[str, Any]:
    """Official and loose scores of one row (``logits`` ``[V]``; target and label tokens in the prompt's context)."""
    target = answers(item.output, prompt)
    label_ids = [answers(lab, prompt) for lab in task.labels]
    scores = {key: values[0] for key, values in score_logits(logits[None], [target], label_ids or None).items()}
    pred, target_text = answers.decode(scores["prediction"]), answers.decode(target)
    pred_word = pred.strip() if pred is not None else ""
    label_words = {answers.decode(i).strip() for i in label_ids}
    return {
        "target_token": target_text, "prediction": pred, "correct": bool(scores["correct"]),
        "label_prediction": answers.decode(scores["label_prediction"]), "label_correct": scores["label_correct"],
        "in_labels": scores["in_labels"], "correct_loose": bool(pred_word) and pred_word == target_text.strip(),
        "in_labels_loose": pred_word in label_words if task.labels else None, "bad_logits": bool(scores["bad_logits"]),
    }
