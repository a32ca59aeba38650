"""Model loading and encoders on tiny models built in code (no downloads)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

import workbench as wb
from workbench.core.architectures import ARCHITECTURES, architecture_of
from workbench.core.encoders import Encoder
from workbench.core.models import wrap_model
from workbench.core.testing import TINY_CONFIGS, tiny_model, tiny_tokenizer


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_every_supported_architecture_finds_its_blocks(arch):
    lm = tiny_model(arch)
    assert lm.num_layers == 4 and lm.hidden_size == 32
    assert not any(p.requires_grad for p in lm.hf.parameters())
    assert not lm.hf.training
    assert lm.tokenizer.padding_side == "left"


def test_unknown_architecture_names_class_and_supported():
    cfg = BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    with pytest.raises(ValueError, match=r"BertModel.*gpt2.*llama"):
        architecture_of(BertModel(cfg))


def test_local_folder_roundtrip(tmp_path):
    """The real from_pretrained path (what hub ids use), on a folder the test writes."""
    lm = tiny_model("llama", texts=["hello world"])
    lm.hf.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    again = wb.load_model(str(tmp_path))
    prompts = ["hello world", "hello"]
    assert torch.equal(wb.next_token_logits(lm, prompts), wb.next_token_logits(again, prompts))
    assert again.describe()["num_layers"] == 4


@pytest.mark.parametrize("bad", ["./no/such/folder", "/tmp/nothing.gguf", "", 3])
def test_unknown_model_raises_with_aliases(bad):
    with pytest.raises((ValueError, FileNotFoundError), match=r"smollm2-135m|does not exist|non-empty"):
        wb.load_model(bad)


def test_folder_without_config_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        wb.load_model(str(tmp_path))


def test_scratch_encoder_pooling_and_grads():
    tok = tiny_tokenizer(["hello world the movie"])
    enc = wb.load_encoder("scratch:2x32", tokenizer=tok, seed=0).eval()
    assert isinstance(enc, Encoder) and enc.dim == 32
    texts = ["hello world the movie", "hello"]
    out = enc.encode(texts)
    assert out.shape == (2, 32)
    alone = enc.encode(["hello"])
    assert torch.allclose(out[1], alone[0], atol=1e-5)  # last real token whatever the padding
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)
    mean = wb.load_encoder("scratch:2x32", tokenizer=tok, seed=0, pooling="mean").eval().encode(texts)
    assert not torch.allclose(mean, out)
    again = wb.load_encoder("scratch:2x32", tokenizer=tok, seed=0).eval().encode(texts)
    assert torch.equal(again, out.detach())


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("scratch:4x256", {}, "needs a tokenizer"),
        ("scratch:big", {}, "scratch:<layers>x<width>"),
        ("minilm-l6", {"pooling": "max"}, "unknown pooling 'max'"),
        ("", {}, "non-empty"),
    ],
)
def test_bad_encoder_raises(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        wb.load_encoder(name, **kwargs)


def test_layer_paths_cover_required_families():
    for family in ("llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text", "gpt2", "gpt_neox", "phi"):
        assert family in ARCHITECTURES


def test_wrap_model_freezes():
    lm = tiny_model("gpt2")
    lm.hf.requires_grad_(True)
    lm.hf.train()
    again = wrap_model(lm.hf, lm.tokenizer, name="x", chat=False)
    assert not again.hf.training and not any(p.requires_grad for p in again.hf.parameters())
