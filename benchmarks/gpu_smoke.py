"""GPU smoke test: the workbench's hot paths on a CUDA machine in a few minutes, with no network and no weights.

    python benchmarks/gpu_smoke.py                 # on a CUDA machine (bf16); without CUDA: says so, exits 0
    python benchmarks/gpu_smoke.py --device cpu --tiny   # the same checks on tiny models (float32), seconds

Models are random-init, built from configs in this script: a Llama-3-8B-wide decoder (hidden 4096, 32 heads, 8 kv
heads, MLP 14336, vocabulary 128256) at 4 blocks, and a small BERT-like encoder as ATV's generator. Needs torch,
transformers, peft, accelerate and the rest of this project's imports (checked first, each missing one named); the
project itself is imported from this checkout. One line per check, ``ok`` or ``FAIL``; exit 1 on any failure:

* load: the model in bf16 on ``cuda`` (parameters, dtype, device, seconds);
* injection: ``Injection`` through nnsight equals the plain-hook reference (``tests/reference_hooks.py``);
* train: one epoch of ``train_atv``'s fast path (examples/s) against the official-style loop
  (``benchmarks/train_speed.official_rate``), and the fast loss equal to the naive one;
* cache: shared-prefix evaluation equal to uncached, and its speedup;
* offload: the model with blocks offloaded by a ``device_map`` (to the CPU next to the GPU; to disk with
  ``--device cpu``) gives the same injected and cached logits and the same fingerprint;
* memory: peak GPU memory.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

#: distributions the checks import, by import name (pip name when it differs)
REQUIRED = {"torch": "torch", "transformers": "transformers", "peft": "peft", "accelerate": "accelerate",
            "nnsight": "nnsight", "numpy": "numpy", "pandas": "pandas", "safetensors": "safetensors",
            "tokenizers": "tokenizers"}
#: project modules the checks use (their own imports are checked by importing them)
MODULES = ("workbench.core.testing", "workbench.core.inference", "workbench.atv.training", "workbench.atv.fastpath",
           "workbench.atv.generator", "reference_hooks", "train_speed")
#: max |a - b| / max |b| accepted between two computations that should agree, per dtype
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}
WORDS = ("good great fine nice fun bad dull slow weak awful film movie plot cast song scene story end music acting "
         "the a was is and very not really quite").split()


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def missing_requirements() -> list[str]:
    """What is not importable: "<name> (pip install <dist>)" per missing requirement or project import."""
    missing = [f"{name} (pip install {dist})" for name, dist in REQUIRED.items()
               if importlib.util.find_spec(name) is None]
    if missing:
        return missing
    for module in MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            missing.append(f"{err.name} (needed by {module}; pip install {err.name})")
    return missing


def relative_difference(a: Any, b: Any) -> float:
    """max |a - b| / max |b| (0 when both are 0)."""
    a, b = a.float().cpu(), b.float().cpu()
    scale = float(b.abs().max())
    return float((a - b).abs().max()) / scale if scale else float((a - b).abs().max())


def agree(a: Any, b: Any, dtype_name: str) -> tuple[bool, float]:
    diff = relative_difference(a, b)
    return math.isfinite(diff) and diff <= TOLERANCE[dtype_name], diff


def llm_config(tiny: bool, vocab: int) -> Any:
    from transformers import LlamaConfig

    if tiny:
        sizes = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                     vocab_size=max(vocab, 256), num_hidden_layers=4)
    else:  # Llama-3-8B's width and heads, 4 of its 32 blocks
        sizes = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
                     vocab_size=128256, num_hidden_layers=4, rope_theta=500000.0)
    return LlamaConfig(max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=0, bos_token_id=2,
                       eos_token_id=3, **sizes)


def encoder_config(tiny: bool, vocab: int) -> Any:
    from transformers import BertConfig

    width, layers, heads = (32, 1, 2) if tiny else (384, 6, 12)  # MiniLM-L6's shape
    return BertConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=4 * width, max_position_embeddings=512, pad_token_id=0)


def toy_tasks(n_items: int) -> list[Any]:
    from workbench.tasks.registry import Item, Task

    tasks = []
    for t, (name, labels) in enumerate([("smoke_sentiment", ("positive", "negative")), ("smoke_yesno", ("Yes", "No"))]):
        items = [Item(" ".join(WORDS[(7 * i + 3 * t + j) % len(WORDS)] for j in range(6)), labels[i % 2])
                 for i in range(n_items)]
        tasks.append(Task(name=name, category="NLU", domain="NLU", labels=labels, in_domain=True,
                          templates=["Review : {input}", "Text : {input} ?", "{input} . Label :"],
                          train=items, valid=items[:2], test=items))
    return tasks


def long_prompts(n_items: int, body_words: int) -> list[str]:
    """3 variants of each item after one long shared context (a few-shot-like body)."""
    context = " ".join(WORDS[(5 * j) % len(WORDS)] for j in range(body_words))
    items = [" ".join(WORDS[(3 * i + j) % len(WORDS)] for j in range(5)) for i in range(n_items)]
    return [f"{context} . {item} {p}" for item in items for p in ("A :", "Answer :", "Label :")]


def build_hf(tiny: bool, device: str, dtype: Any, tokenizer: Any, seed: int = 0) -> Any:
    """The random-init decoder (the same weights for the same seed), built directly on `device`."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(llm_config(tiny, len(tokenizer)), dtype=dtype)


def check_load(tiny: bool, device: str, dtype: Any, texts: list[str]) -> tuple[Check, Any]:
    from workbench.core.models import wrap_model
    from workbench.core.testing import tiny_tokenizer

    start = time.perf_counter()
    tok = tiny_tokenizer(texts)
    lm = wrap_model(build_hf(tiny, device, dtype, tok), tok, name="tiny-llama" if tiny else "llama3-8b-width-4-blocks",
                    chat=False)
    n = sum(p.numel() for p in lm.hf.parameters())
    ok = lm.device.type == device and lm.dtype == dtype
    size = f"{n / 1e9:.2f} B" if n > 1e8 else f"{n / 1e6:.2f} M"
    return Check("load", ok, f"{size} parameters, {str(lm.dtype).replace('torch.', '')} on {lm.device}, "
                             f"{lm.num_layers} blocks x {lm.hidden_size}, {time.perf_counter() - start:.1f} s"), lm


def check_injection(lm: Any, prompts: list[str], dtype_name: str) -> Check:
    """Injection through nnsight vs plain forward hooks on the same model (vectors exact in the model's dtype)."""
    import torch
    from reference_hooks import hook_logits

    from workbench.core.inference import next_token_logits
    from workbench.core.interventions import Injection

    torch.manual_seed(1)
    layers = [0, lm.num_layers // 2, lm.num_layers - 1]
    vectors = torch.randn(lm.num_layers, lm.hidden_size).to(lm.dtype).to(torch.float32).to(lm.device)
    with torch.no_grad():
        ours = next_token_logits(lm, prompts, Injection(vectors, scale=1.0, layers=layers), batch_size=len(prompts))
        ref = hook_logits(lm, prompts, vectors.to(lm.dtype), 1.0, layers).float().cpu()
        plain = next_token_logits(lm, prompts, batch_size=len(prompts))
    ok, diff = agree(ours, ref, dtype_name)
    moved = relative_difference(ours, plain)
    ok = ok and moved > 10 * max(diff, TOLERANCE[dtype_name] / 10)
    return Check("injection", ok, f"nnsight vs plain hooks: max rel diff {diff:.2e} (limit {TOLERANCE[dtype_name]:g});"
                                  f" the injection moves the logits by {moved:.2e}")


def check_training(lm: Any, tasks: list[Any], tiny: bool, dtype_name: str) -> Check:
    """One epoch of the fast path vs the official-style loop, and the fast loss equal to the naive one."""
    import copy

    import torch
    from train_speed import official_rate
    from transformers import BertModel

    from workbench.atv.examples import training_examples
    from workbench.atv.fastpath import PrefixStore, fast_answer_loss
    from workbench.atv.generator import ATVGenerator
    from workbench.atv.loss import answer_loss
    from workbench.atv.train_config import TrainConfig
    from workbench.atv.training import train_atv
    from workbench.core.encoders import Encoder
    from workbench.core.interventions import Injection

    torch.manual_seed(2)
    body = BertModel(encoder_config(tiny, len(lm.tokenizer)), add_pooling_layer=False).to(lm.device)
    generator = ATVGenerator(Encoder(body, copy.deepcopy(lm.tokenizer), "bert-like", pooling="mean"), lm)
    n_items = len(tasks[0].train)
    config = TrainConfig(n_train=n_items, epochs=1, batch_size=4, valid_items=0, scale=0.05, lr=1e-3, seed=0)
    examples = training_examples(tasks, 2 if tiny else 4, config.seed + 1, config.prefix, config.generator_input)
    initial = copy.deepcopy(generator.state_dict())
    official = official_rate(lm, generator, examples, config)
    generator.load_state_dict(initial)
    df = train_atv(lm, generator, tasks, config, progress=False)
    n = len(training_examples(tasks, config.n_train, config.seed, config.prefix, config.generator_input))
    prefix_s = df.attrs["prefix_cache"]["seconds"]
    fast = n / (prefix_s + float(df.seconds.sum()))
    ex = training_examples(tasks, 2, 5, config.prefix, config.generator_input)[:4]
    prompts, targets = [e.prompt(lm) for e in ex], [e.target for e in ex]
    with torch.no_grad():
        vectors = generator.vectors([e.generator_text for e in ex]).to(lm.dtype)
        naive = answer_loss(lm, prompts, targets, Injection(vectors, config.scale))
        cached = fast_answer_loss(lm, prompts, targets, Injection(vectors, config.scale), store=PrefixStore())
    same, diff = agree(cached.reshape(1), naive.reshape(1), dtype_name)
    loss = float(df.train_loss.iloc[-1])
    ok = same and math.isfinite(loss)
    return Check("train", ok, f"fast path {fast:.1f} examples/s ({n} examples, prefix caches {prefix_s:.1f} s "
                              f"included) vs official-style loop {official:.1f} examples/s: {fast / official:.1f}x; "
                              f"train loss {loss:.3f}; fast vs naive loss rel diff {diff:.1e}")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def check_cache(lm: Any, prompts: list[str], dtype_name: str, name: str = "cache") -> Check:
    """Shared-prefix evaluation (one BodyCache) vs whole prompts, with a last-token injection; and its speedup."""
    import torch

    from workbench.core.inference import cached_next_token_logits, next_token_logits
    from workbench.core.interventions import Injection
    from workbench.core.kv_cache import BodyCache

    torch.manual_seed(3)
    inj = Injection(torch.randn(len(prompts), lm.num_layers, lm.hidden_size), scale=0.5)
    with torch.no_grad():
        next_token_logits(lm, prompts[:3], Injection(inj.vectors[:3], 0.5))  # warm up
        t_plain, plain = timed(lambda: next_token_logits(lm, prompts, inj, batch_size=8))
        t_cached, cached = timed(lambda: cached_next_token_logits(lm, prompts, inj, BodyCache(4096), batch_size=8))
    ok, diff = agree(cached, plain, dtype_name)
    agree_top = float((cached.argmax(-1) == plain.argmax(-1)).float().mean())
    return Check(name, ok, f"cached vs uncached max rel diff {diff:.2e} (limit {TOLERANCE[dtype_name]:g}), argmax "
                           f"agrees on {agree_top:.0%}; {len(prompts)} prompts: uncached {t_plain:.2f} s, cached "
                           f"{t_cached:.2f} s, speedup {t_plain / t_cached:.1f}x")


def check_offload(lm: Any, tiny: bool, device: str, dtype: Any, prompts: list[str], dtype_name: str) -> Check:
    """The same model with its last blocks offloaded by a device_map (accelerate's hooks bring their weights in per
    forward) gives the same injected logits, cached logits and fingerprint."""
    import torch
    from accelerate import dispatch_model

    from workbench.core.inference import cached_next_token_logits, next_token_logits
    from workbench.core.interventions import Injection
    from workbench.core.models import wrap_model
    from workbench.core.placement import block_devices, offloaded_blocks

    twin = build_hf(tiny, device, dtype, lm.tokenizer)  # same seed: the same weights as `lm`
    off = "disk" if device == "cpu" else "cpu"
    here = 0 if device == "cuda" else "cpu"
    L = lm.num_layers
    device_map = {"model.embed_tokens": here, "model.rotary_emb": here, "model.norm": here, "lm_head": here,
                  **{f"model.layers.{i}": (off if i >= L // 2 else here) for i in range(L)}}
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-offload-") as folder:
        hf = dispatch_model(twin, device_map=device_map, offload_dir=folder)
        placed = wrap_model(hf, lm.tokenizer, name=lm.name, chat=False)
        torch.manual_seed(4)
        inj = Injection(torch.randn(len(prompts), L, lm.hidden_size), scale=0.5)
        with torch.no_grad():
            want = next_token_logits(lm, prompts, inj, batch_size=8)
            got = next_token_logits(placed, prompts, inj, batch_size=8)
            cached = cached_next_token_logits(placed, prompts, inj, batch_size=8)
        ok1, d1 = agree(got, want, dtype_name)
        ok2, d2 = agree(cached, want, dtype_name)
        same = placed.fingerprint == lm.fingerprint
        blocks = offloaded_blocks(placed)
        devices = sorted({str(d) for d in block_devices(placed)})
    ok = ok1 and ok2 and same and blocks == list(range(L // 2, L))
    return Check("offload", ok, f"blocks {blocks} offloaded to {off}, run on {devices}: injected logits rel diff "
                                f"{d1:.2e}, cached {d2:.2e}; fingerprint {'equal' if same else 'DIFFERENT'}")


def check_memory(device: str) -> Check:
    import torch

    if device != "cuda":
        return Check("memory", True, "peak GPU memory: n/a on cpu")
    peak = torch.cuda.max_memory_allocated() / 2**30
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    return Check("memory", peak < total, f"peak GPU memory {peak:.2f} GiB of {total:.0f} GiB "
                                         f"({torch.cuda.get_device_name(0)})")


def guarded(name: str, fn: Callable[[], Any]) -> Any:
    """fn() or a failed Check carrying the exception (a crash is a failure, and the other checks still run)."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - reported as this check's failure
        return Check(name, False, f"{type(err).__name__}: {err}")


def run_checks(device: str, tiny: bool) -> list[Check]:
    import torch

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    dtype_name = str(dtype).replace("torch.", "")
    tasks = toy_tasks(4 if tiny else 16)
    prompts = long_prompts(4 if tiny else 8, 40 if tiny else 400)
    texts = [w for t in tasks for it in t.train for w in it] + [tp for t in tasks for tp in t.templates] + prompts
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loaded = guarded("load", lambda: check_load(tiny, device, dtype, texts))
    if isinstance(loaded, Check):
        print(loaded.line(), flush=True)
        return [loaded]
    load, lm = loaded
    print(load.line(), flush=True)
    checks = [load]
    for name, check in (("injection", lambda: check_injection(lm, prompts[:6], dtype_name)),
                        ("train", lambda: check_training(lm, tasks, tiny, dtype_name)),
                        ("cache", lambda: check_cache(lm, prompts, dtype_name)),
                        ("offload", lambda: check_offload(lm, tiny, device, dtype, prompts[:6], dtype_name)),
                        ("memory", lambda: check_memory(device))):
        result = guarded(name, check)
        print(result.line(), flush=True)
        checks.append(result)
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models (seconds; what the unit test runs)")
    args = parser.parse_args(argv)
    missing = missing_requirements()
    if missing:
        print(f"FAIL requirements: missing {', '.join(missing)}")
        return 1
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA device (torch {torch.__version__}): nothing to check on a GPU; "
              "`--device cpu --tiny` runs the checks on the CPU")
        return 0
    start = time.perf_counter()
    print(f"gpu_smoke on {args.device}{' (tiny models)' if args.tiny else ''}: torch {torch.__version__}", flush=True)
    checks = run_checks(args.device, args.tiny)
    failed = [c.name for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)}/{len(checks)} checks ok in {time.perf_counter() - start:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
