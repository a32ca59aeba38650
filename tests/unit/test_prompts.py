"""Prompt building for every task (real data files), variants, chat rendering and token counts."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from workbench.core import tokens
from workbench.tasks import prompts as P
from workbench.tasks.registry import load_task, task_names

SIMPLE_CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
NO_SYSTEM_CHAT = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def word_tokenizer(texts=("hello world",)) -> PreTrainedTokenizerFast:
    words = sorted({w for t in texts for w in t.split()})
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("name", task_names("all") + task_names("extra"))
def test_every_task_builds_nine_prompts(name):
    task = load_task(name)
    vs = P.variants()
    assert len(vs) == 9 and len(set(vs)) == 9
    for item in task.test[:3] + task.train[:2]:
        texts = set()
        for t, prefix in vs:
            text = P.build_text(task.templates[t], item.input, prefix)
            before, after = task.templates[t].split("{input}")
            assert text.startswith(before) and text.endswith(after + "\n" + prefix)
            assert item.input.strip() in text and "{input}" not in text
            texts.add(text)
        assert len(texts) == 9 or len(set(task.templates)) < 3
    assert P.task_texts(task, task.test[:2], 1, "Answer:") == [
        P.build_text(task.templates[1], it.input, "Answer:") for it in task.test[:2]]


def test_build_text_format_and_strip():
    assert P.build_text("Q: {input}", "  2+2?\n", "A:") == "Q: 2+2?\nA:"
    assert P.build_text("Q: {input}", " x ", "A:", strip=False) == "Q:  x \nA:"
    # braces inside the input are data, not format fields (mmlu_pro_math has LaTeX)
    assert P.build_text("{input}", "${u_1, u_2}$", "The answer is") == "${u_1, u_2}$\nThe answer is"
    assert P.target_text("B") == " B"
    with pytest.raises(ValueError, match="literal braces"):
        P.build_text("{input} {other}", "x", "A:")
    with pytest.raises(ValueError, match="placeholder"):
        P.build_text("no placeholder", "x", "A:")


def test_real_template_example():
    task = load_task("boolq")
    text = P.build_text(task.templates[0], task.test[0].input, P.TRAIN_PREFIX)
    assert text == task.test[0].input + "\nAnswer True or False.\nA:"


def test_variants_selection_and_errors():
    assert P.PREFIXES == ("A:", "Answer:", "The answer is") and P.TRAIN_PREFIX == "A:"
    assert P.variants(0, "A:") == [(0, "A:")]
    assert P.variants([2, 0], ["Answer:", "A:"]) == [(2, "Answer:"), (0, "Answer:"), (2, "A:"), (0, "A:")]
    assert P.variants("all", "The answer is") == [(0, "The answer is"), (1, "The answer is"), (2, "The answer is")]
    with pytest.raises(ValueError, match=r"template index 3 is invalid; accepted: integers 0-2"):
        P.variants(3)
    with pytest.raises(ValueError, match=r"templates='some'"):
        P.variants("some")
    with pytest.raises(ValueError, match=r"answer prefix 'Answer' is invalid"):
        P.variants("all", ["Answer"])
    with pytest.raises(ValueError, match="prefixes"):
        P.variants("all", [])
    with pytest.raises(ValueError, match="template index True"):
        P.variants([True])


def test_apply_chat_template_like_official():
    tok = word_tokenizer()
    tok.chat_template = SIMPLE_CHAT
    out = tokens.apply_chat_template(tok, "Q: hi\nA:")
    assert out == "<|system|>You are a helpful chatbot.<|end|><|user|>Q: hi\nA:<|end|><|assistant|>"
    assert tokens.apply_chat_template(tok, "x", system=None) == "<|user|>x<|end|><|assistant|>"
    tok.chat_template = NO_SYSTEM_CHAT
    assert tokens.apply_chat_template(tok, "x") == "<|user|>x<|assistant|>"
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat_template"):
        tokens.apply_chat_template(tok, "x")


def test_uses_chat_template_rule():
    tok = word_tokenizer()
    assert not tokens.uses_chat_template("Meta-Llama-3-8B-Instruct", tok)
    tok.chat_template = SIMPLE_CHAT
    assert tokens.uses_chat_template("meta-llama/Meta-Llama-3-8B-Instruct", tok)
    assert not tokens.uses_chat_template("meta-llama/Meta-Llama-3-8B", tok)


def test_count_tokens():
    tok = word_tokenizer(["a b c"])
    assert tokens.count_tokens(tok, ["a b c", "a"]) == [3, 1]  # this tokenizer has no BOS post-processor
    assert tokens.count_tokens(tok, ["<s> a b"], add_special_tokens=False) == [3]
    with pytest.raises(TypeError):
        tokens.count_tokens(tok, "a b")
