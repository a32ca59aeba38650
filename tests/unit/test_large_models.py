"""Large local models on CPU: ``device_map`` and ``quantization`` checked before loading, a model loaded with a
``device_map`` dict evaluates, caches, trains (fast path) and fits LoRA as the plain one does, and every block's
addition and every layer's cached keys/values go to that block's device and dtype."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
import workbench.core.interventions as interventions
from workbench.atv.fastpath import PrefixStore, fast_answer_loss
from workbench.atv.loss import answer_loss
from workbench.core import kv_cache, placement
from workbench.core.inference import cached_next_token_logits, next_token_logits
from workbench.core.interventions import ContextInjection, Injection, Replacement
from workbench.core.testing import tiny_model
from workbench.methods.lora import LoRA
from workbench.tasks.registry import Item, Task

TEXTS = ["the movie was great", "a sad and slow film", "hello world", "is this sentence positive or negative"]
PROMPTS = ["the movie was great . A:", "hello world is this positive ? A:", "the movie was sad . A:"]
TARGETS = [" positive", " negative", " No"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny llama saved as a Hugging Face folder, and the same model loaded plainly."""
    lm = tiny_model("llama", texts=TEXTS)
    folder = tmp_path_factory.mktemp("tiny-llama")
    lm.hf.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder, wb.load_model(str(folder))


def split_map(lm) -> dict[str, str]:
    """Every other block offloaded to disk: accelerate's hooks then bring each one's weights in for its forward
    (its parameters sit on the meta device), the closest a CPU gets to blocks on different devices."""
    blocks = {f"model.layers.{i}": "disk" if i % 2 else "cpu" for i in range(lm.num_layers)}
    return {"model.embed_tokens": "cpu", **blocks, "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


def test_device_map_dict_loads_and_matches_the_plain_model(saved):
    """Injection, shared-prefix cache, the training fast path and LoRA on a model placed by a device_map dict."""
    folder, plain = saved
    lm = wb.load_model(str(folder), device_map=split_map(plain))
    assert lm.describe()["device_map"]["model.layers.1"] == "disk"
    assert {p.device.type for p in lm.layers[1].parameters()} == {"meta"}  # offloaded ...
    assert placement.block_devices(lm) == [torch.device("cpu")] * lm.num_layers  # ... and run on the CPU
    assert lm.fingerprint == plain.fingerprint  # offloaded weights are read for it
    torch.manual_seed(0)
    inj = Injection(torch.randn(plain.num_layers, plain.hidden_size), scale=0.5)
    for x in (None, inj):
        want = next_token_logits(plain, PROMPTS, injection=x)
        torch.testing.assert_close(next_token_logits(lm, PROMPTS, injection=x), want, rtol=0, atol=1e-5)
        torch.testing.assert_close(cached_next_token_logits(lm, PROMPTS, x), want, rtol=0, atol=1e-4)
    v = torch.randn(len(PROMPTS), lm.num_layers, lm.hidden_size, requires_grad=True)
    fast = fast_answer_loss(lm, PROMPTS, TARGETS, Injection(v, scale=0.5), store=PrefixStore())
    slow = answer_loss(plain, PROMPTS, TARGETS, Injection(v, scale=0.5))
    assert abs(float(fast.detach() - slow.detach())) <= 1e-4 * abs(float(slow.detach()))
    with pytest.raises(ValueError, match=r"decoder blocks \[1, 3\], which the device_map offloaded"):
        LoRA().fit(lm, [toy_task()])


def test_lora_on_a_device_map_dict(saved):
    folder, plain = saved
    lm = wb.load_model(str(folder), device_map={k: "cpu" for k in split_map(plain)})
    lora = LoRA(epochs=1, n_train=2, batch_size=2).fit(lm, [toy_task()])
    with lora.active(lm):
        steered = next_token_logits(lm, PROMPTS)
    assert not torch.equal(steered, next_token_logits(lm, PROMPTS))  # trained and applied, then removed


def toy_task():
    items = [Item(t, ("positive", "negative")[i % 2]) for i, t in enumerate(TEXTS)]
    return Task(name="toy_lora", category="NLU", domain="NLU", templates=["{input}", "{input} ?", "Q : {input}"],
                labels=("positive", "negative"), in_domain=True, train=items, valid=items[:2], test=items)


@pytest.mark.parametrize("make", [
    lambda lm: Injection(torch.randn(lm.num_layers, lm.hidden_size, dtype=torch.float64), 0.5, layers=[0, 2]),
    lambda lm: Injection(torch.randn(len(PROMPTS), lm.num_layers, lm.hidden_size).bfloat16(), 0.5, layers=[1, 3]),
    lambda lm: Replacement(torch.randn(lm.num_layers, lm.hidden_size, dtype=torch.float64), layers=[1]),
    lambda lm: ContextInjection(torch.randn(lm.num_layers, 2, lm.hidden_size, dtype=torch.float64),
                                torch.rand(lm.num_layers, 2, 2)),
], ids=["static-float64", "per-prompt-bf16", "replace", "i2cl"])
def test_each_edit_is_moved_to_its_block_output(llama_lm, monkeypatch, make):
    """Vectors in another dtype than the model are moved, per edited block, to that block output's device and
    dtype (:func:`placement.to_block`), and the result equals the vectors cast up front."""
    torch.manual_seed(0)
    edit = make(llama_lm)
    seen: list[tuple[torch.dtype, torch.dtype, torch.device]] = []

    def recording(tensor, hidden):
        seen.append((tensor.dtype, hidden.dtype, hidden.device))
        return placement.to_block(tensor, hidden)

    monkeypatch.setattr(interventions, "to_block", recording)
    got = next_token_logits(llama_lm, PROMPTS, injection=edit)
    assert seen and all(h == torch.float32 and dev == llama_lm.device for _, h, dev in seen)
    monkeypatch.undo()
    same = type(edit).__new__(type(edit))
    same.__dict__.update(edit.__dict__, vectors=edit.vectors.float())
    torch.testing.assert_close(got, next_token_logits(llama_lm, PROMPTS, injection=same), rtol=0, atol=1e-5)


def test_to_block_moves_device_and_dtype_only_when_needed():
    x = torch.ones(2, 3)
    assert placement.to_block(x, torch.zeros(1, dtype=torch.float32)) is x  # the single-device path: no copy
    moved = placement.to_block(x, torch.empty(1, dtype=torch.bfloat16, device="meta"))
    assert moved.device.type == "meta" and moved.dtype == torch.bfloat16


def test_cached_keys_values_go_to_each_blocks_device(llama_lm, monkeypatch):
    devices = [torch.device("cpu"), torch.device("meta")] * (llama_lm.num_layers // 2)
    monkeypatch.setattr(kv_cache, "block_devices", lambda lm: devices)
    pairs = [(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4)) for _ in range(llama_lm.num_layers)]
    cache = kv_cache.placed_cache(llama_lm, pairs)
    assert [layer.keys.device.type for layer in cache.layers] == [d.type for d in devices]
    assert [layer.values.device.type for layer in cache.layers] == [d.type for d in devices]
    assert kv_cache.stacked(cache.layers[:1], torch.device("cpu")).shape == (1, 2, 1, 2, 3, 4)


def test_block_devices_reads_each_block(llama_lm):
    assert placement.block_devices(llama_lm) == [llama_lm.device] * llama_lm.num_layers


@pytest.mark.parametrize("value", ["3bit", "int8", 8, True])
def test_unknown_quantization_names_the_accepted_values(value):
    with pytest.raises(ValueError, match=r"unknown quantization .*'8bit', '4bit'"):
        wb.load_model("no/such-model", quantization=value)


def test_quantization_without_cuda_names_the_value(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"quantization='4bit' needs a CUDA GPU"):
        wb.load_model("no/such-model", quantization="4bit")


def test_quantization_without_bitsandbytes_names_the_package(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = placement.importlib.util.find_spec
    monkeypatch.setattr(placement.importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n))
    with pytest.raises(ValueError, match=r"quantization='8bit' needs the bitsandbytes package"):
        wb.load_model("no/such-model", quantization="8bit")


def test_quantization_kwargs_are_transformers_bitsandbytes_config():
    from transformers import BitsAndBytesConfig

    four = placement.placement_kwargs("auto", "4bit", torch.bfloat16)
    assert isinstance(four["quantization_config"], BitsAndBytesConfig) and four["device_map"] == "auto"
    assert four["quantization_config"].load_in_4bit and four["quantization_config"].bnb_4bit_compute_dtype == \
        torch.bfloat16
    assert placement.placement_kwargs("auto", "8bit", torch.float16)["quantization_config"].load_in_8bit
    assert placement.placement_kwargs(None, None, torch.float32) == {}


@pytest.mark.parametrize("bad, match", [
    ("everywhere", r"device_map 'everywhere' is not accepted; use one of \('auto'"),
    ({"model.layers.0": "gpu9"}, r"device_map\['model.layers.0'\] = 'gpu9' is not a device"),
    ({"model.layers.0": 1.5}, r"device_map\['model.layers.0'\] = 1.5 is not a device"),
    ({}, "non-empty dict"),
    ([("a", 0)], "non-empty dict"),
])
def test_bad_device_map_is_refused_before_loading(bad, match):
    with pytest.raises(ValueError, match=match):
        wb.load_model("no/such-model", device_map=bad)


def test_device_and_device_map_together_are_refused():
    with pytest.raises(ValueError, match="either device='cpu' or device_map='auto'"):
        wb.load_model("no/such-model", device="cpu", device_map="auto")
