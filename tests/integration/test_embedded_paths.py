"""The embedded models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) through the paths the unit tier pins on tiny models:
evaluation, the CLI, the training fast path, the shared-prefix cache and bucketed encoding."""

from __future__ import annotations

import json

import pytest
import torch

import workbench as wb
from workbench import cli
from workbench.atv.fastpath import fast_answer_loss
from workbench.atv.loss import answer_loss
from workbench.core.batching import length_buckets
from workbench.core.encoders import load_encoder
from workbench.core.inference import cached_next_token_logits, next_token_logits
from workbench.core.interventions import Injection
from workbench.core.kv_cache import BodyCache
from workbench.eval.evaluate import evaluate
from workbench.eval.tables import summarize
from workbench.methods.prompting import ZeroShot
from workbench.tasks.prompts import PREFIXES, build_text, variants

ENCODER_TEXTS = ["hello", "the movie was great and long and slow and sad, a film of many many words indeed",
                 "a sad film", "world", "is this sentence positive or negative", "great"] * 2


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def loss_and_grad(fn, lm, prompts, targets, v, scale, **kw):
    loss = fn(lm, prompts, targets, Injection(v, scale=scale), **kw)
    return loss.detach(), torch.autograd.grad(loss, v)[0]


@pytest.mark.embedded
def test_zero_shot_on_embedded_model(smollm):
    df = evaluate(smollm, ZeroShot(), ["glue_sst2", "glue_cola"], n_test=4, batch_size=8, progress=False)
    assert len(df) == 2 * 4 * 9
    for col in ("task", "category", "item", "template", "prefix", "seed", "target", "prediction", "correct",
                "label_prediction", "label_correct", "in_labels", "n_prompt_tokens", "latency", "method"):
        assert col in df.columns
    assert set(df["prefix"]) == set(PREFIXES) and set(df["template"]) == {0, 1, 2}
    assert (df.groupby("task")["item"].nunique() == 4).all()
    assert df["method"].eq("zero-shot").all() and (df["latency"] > 0).all()
    assert df["n_prompt_tokens"].between(10, 400).all()
    assert df["in_labels"].dtype == bool and df["label_correct"].notna().all()
    assert df.attrs["efficiency"]["peak_gib"] > 0
    assert (df["correct_loose"] >= df["correct"]).all() and (df["in_labels_loose"] >= df["in_labels"]).all()
    # chat prompt: the official target is " positive" after "assistant\n"; the loose scores ignore the space
    assert df["target_token"].str.startswith(" ").all()
    summary = summarize(df)
    assert set(summary["name"]) >= {"glue_sst2", "glue_cola", "NLU", "in_domain", "unseen", "all"}


@pytest.mark.embedded
def test_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    code = cli.main(["eval", "--method", "zero-shot", "--tasks", "glue_sst2", "--n-test", "2", "--templates", "0",
                     "--prefixes", "A:", "--run-dir", str(run), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "== in_domain ==" in out and "== efficiency ==" in out and "zero-shot" in out and "(loose" in out
    assert (run / "results" / "glue_sst2.parquet").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["n_test"] == 2 and config["method"] == {"name": "zero-shot"}
    assert json.loads((run / "efficiency.json").read_text())["summary"]["n_items"] == 2


@pytest.mark.embedded
def test_fast_equals_naive_smollm(smollm):
    """SmolLM2 in float32: fast (batched, cached) vs naive (batch 1, no padding) within 1e-4. (The naive path on a
    left-padded batch is itself ~1e-4 off the float64 result; the fast path ~3e-6; in float64 both agree exactly.)"""
    from workbench.atv.examples import training_examples
    from workbench.tasks.registry import load_task

    examples = training_examples([load_task("glue_sst2"), load_task("crows_pairs")], n_train=1)[::2]
    prompts, targets = [e.prompt(smollm) for e in examples], [e.target for e in examples]
    torch.manual_seed(0)
    v = torch.randn(len(prompts), smollm.num_layers, smollm.hidden_size, requires_grad=True)
    fast_l, fast_g = loss_and_grad(fast_answer_loss, smollm, prompts, targets, v, 0.05)
    naive_l = torch.zeros(())
    naive_g = torch.zeros_like(v)
    for i in range(len(prompts)):
        loss = answer_loss(smollm, prompts[i: i + 1], targets[i: i + 1], Injection(v[i: i + 1], scale=0.05))
        naive_l += loss.detach() / len(prompts)
        naive_g += torch.autograd.grad(loss, v)[0] / len(prompts)
    assert abs(float(fast_l - naive_l)) <= 1e-4 * abs(float(naive_l))
    assert rel(fast_g, naive_g) <= 1e-4


@pytest.mark.embedded
def test_cached_equals_uncached_on_the_embedded_model(smollm):
    lm = smollm
    task = wb.load_task("glue_sst2")
    texts = [lm.render(build_text(task.templates[t], it.input, p)) for it in task.test[:2] for t, p in variants()]
    inj = Injection(torch.randn(len(texts), lm.num_layers, lm.hidden_size), scale=0.05)
    plain = next_token_logits(lm, texts, inj, batch_size=6)
    cached = cached_next_token_logits(lm, texts, inj, cache=BodyCache(256), batch_size=6)
    assert (cached - plain).abs().max() < 1e-4 and torch.equal(cached.argmax(-1), plain.argmax(-1))


@pytest.mark.embedded
def test_bucketed_minilm_encode_equals_one_batch(minilm):
    """MiniLM: values and gradients of the bucketed pass match one right-padded batch (the unit tier does scratch)."""
    enc = load_encoder("minilm-l6", seed=0).eval()
    assert len(length_buckets(enc.tokenize(ENCODER_TEXTS)["attention_mask"].sum(1).tolist())) > 1
    grads = []
    for fn in (enc.encode, lambda t: enc(**enc.tokenize(t))):
        enc.zero_grad()
        out = fn(ENCODER_TEXTS)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        grads.append((out.detach(), torch.cat([p.grad.flatten() for p in enc.parameters() if p.grad is not None])))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    assert float((grads[0][1] - grads[1][1]).norm() / grads[1][1].norm()) < 1e-4
