"""First-token scoring, label-restricted scoring, format adherence and consistency on hand-made logits."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from workbench.eval import scoring as S
from workbench.tasks import answers as A

CORPUS = ["Question: Is this wrong? Answer Yes or No.\nA: Yes", "The answer is B", "Options:\nA. x\nB. y",
          "positive negative True False Neither No Yes A B C D"] * 5


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 / Llama-3 style: the space is part of the next token)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>")


def sentencepiece_like() -> PreTrainedTokenizerFast:
    """Llama-2 style: a '▁' is prepended and spaces become '▁', so " A" alone is ['▁', '▁A']."""
    vocab = {w: i for i, w in enumerate(["<unk>", "▁", "▁A", "▁B", ":", "▁Yes", "▁Ye", "▁Yellow"])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"▁?\w+|▁|[^\w▁]"), behavior="isolated")
    core.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")


def test_target_first_token_bpe_matches_in_context():
    tok = bpe_tokenizer()
    for out in ["Yes", "No", "B", "positive", "Neither"]:
        alone = A.target_first_token(tok, out)
        assert alone == tok(" " + out, add_special_tokens=False)["input_ids"][0]
        assert A.target_first_token(tok, out, prompt="Question: Is this wrong?\nA:") == alone
        assert tok.decode([alone]).startswith(" ")


def test_target_first_token_sentencepiece_fallback():
    tok = sentencepiece_like()
    assert tok(" A", add_special_tokens=False)["input_ids"] == [1, 2]  # bare '▁' first, as Llama-2 does
    assert A.target_first_token(tok, "A") == 2
    assert A.target_first_token(tok, "A", prompt="A:") == 2
    assert A.label_token_ids(tok, ["A", "B"]) == [2, 3]


def test_label_token_ids_rejects_shared_first_token():
    tok = bpe_tokenizer()
    ids = A.label_token_ids(tok, ["Yes", "No"])
    assert len(set(ids)) == 2
    sp = sentencepiece_like()
    sp.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"▁Ye|\w+|▁|[^\w▁]"), behavior="isolated")
    with pytest.raises(ValueError, match="share their first token"):
        A.label_token_ids(sp, ["Yes", "Yellow"])


def test_score_logits_hand_made():
    logits = torch.full((4, 10), -5.0)
    logits[0, 3] = 2.0                      # predicts 3 (label, correct)
    logits[1, 7] = 3.0
    logits[1, 4] = 1.0                      # predicts 7 (not a label); best label 4 (correct)
    logits[2, 5] = 1.0                      # predicts 5 (label, wrong)
    logits[3, 9] = 4.0
    logits[3, 5] = 0.5                      # predicts 9; best label 5 (wrong)
    rec = S.score_logits(logits, [3, 4, 4, 3], label_ids=[3, 4, 5])
    assert rec["prediction"] == [3, 7, 5, 9]
    assert rec["correct"] == [True, False, False, False]
    assert rec["label_prediction"] == [3, 4, 5, 5]
    assert rec["label_correct"] == [True, True, False, False]
    assert rec["in_labels"] == [True, False, True, False]
    plain = S.score_logits(logits, torch.tensor([3, 7, 0, 0]))
    assert plain["correct"] == [True, True, False, False] and plain["in_labels"] == [None] * 4
    with pytest.raises(ValueError, match=r"\[B, V\]"):
        S.score_logits(logits[0], [3])
    with pytest.raises(ValueError, match="3 target ids for 4 rows"):
        S.score_logits(logits, [1, 2, 3])
    with pytest.raises(ValueError, match="out of range"):
        S.score_logits(logits, [1, 2, 3, 4], label_ids=[10])


def rec(task: str, item: int, variant: int, prediction: int, correct: bool, in_labels: bool) -> dict:
    return {"task": task, "item": item, "seed": 42, "variant": variant, "prediction": prediction,
            "correct": correct, "in_labels": in_labels}


def records() -> pd.DataFrame:
    rows = []
    # item 0 of t1: 3 variants A, A, B -> pairs agreeing 1/3; item 1: all same -> 1
    for v, p in enumerate([1, 1, 2]):
        rows.append(rec("t1", 0, v, p, p == 1, True))
    for v in range(3):
        rows.append(rec("t1", 1, v, 5, False, False))
    # t2: one item, 4 variants 1,2,3,4 -> 0; one item seen once -> skipped
    for v, p in enumerate([1, 2, 3, 4]):
        rows.append(rec("t2", 0, v, p, True, True))
    rows.append(rec("t2", 1, 0, 1, True, True))
    return pd.DataFrame(rows)


def test_consistency_formula():
    df = records()
    by_task = S.consistency_by_task(df)
    assert by_task["t1"] == pytest.approx((1 / 3 + 1) / 2)
    assert by_task["t2"] == 0.0
    assert S.item_consistency(df)["consistency"].mean() == pytest.approx((1 / 3 + 1 + 0) / 3)
    # seeds are separate groups
    df2 = pd.concat([df, df.assign(seed=10, prediction=7)])
    assert S.item_consistency(df2)["n_variants"].min() == 3
    with pytest.raises(ValueError, match="missing"):
        S.consistency_by_task(df.drop(columns="item"))




def test_garbage_logits_are_scored_wrong_with_no_prediction():
    logits = torch.full((5, 6), -1.0)
    logits[0, 2] = 3.0                      # a real row: predicts 2
    logits[1] = 0.0                         # all equal: argmax would be token 0, the first label
    logits[2, 4] = float("nan")
    logits[3, 1] = float("inf")
    logits[4, 0] = -float("inf")
    assert S.bad_logit_rows(logits).tolist() == [False, True, True, True, True]
    rec = S.score_logits(logits, [2, 0, 0, 1, 0], label_ids=[0, 1, 2])
    assert rec["bad_logits"] == [False, True, True, True, True]
    assert rec["prediction"] == [2, None, None, None, None] and rec["label_prediction"] == [2, None, None, None, None]
    assert rec["correct"] == [True, False, False, False, False]
    assert rec["label_correct"] == [True, False, False, False, False]
    assert rec["in_labels"] == [True, False, False, False, False]
    plain = S.score_logits(logits, [2, 0, 0, 1, 0])
    assert plain["correct"] == [True, False, False, False, False] and plain["label_correct"] == [None] * 5
