"""Where a training step's time goes: each fast-path component the old way vs train_atv's way, and one table per
generator source.

    .venv/bin/python benchmarks/train_components.py [--items 8] [--repeats 5] [--threads 2]
                                                    [--sources minilm-l6,scratch:4x256,self:16] [--skip-old-new]

On the cpu-demo preset's model and tasks, medians over `--repeats` (seconds), one run:

* old -> new (each line ends with the ratio measured in this run): prefix pass per example, batch 1 vs
  ``PrefixStore`` (length buckets, a head shared per task template), then with the bodies an item's templates share
  (they start with its input: run once, each template's rest from it); collate of 24 prefixes with a generator
  step between calls, a fresh buffer vs the store's workspace; the generator's forward + backward on 24 texts,
  one padded batch vs length buckets and float32 vs bf16 autocast; the answer cross-entropy over [24, vocab]
  logits, class dimension of ``[B, V, K]`` vs rows of ``[B*K, V]``; an Adam step, torch's default vs fused.
* per source, one training step of cpu-demo's batch (8 items x 3 templates, float32): the generator's forward +
  backward (MiniLM read frozen as in cpu-demo: the projection only; ``scratch`` trained; ``self:K``: the
  projection only), the LLM's loss forward + backward on the cached prefixes, the Adam step; and the per-query
  cost of the states computed once before training: the encoder's own pass, and for ``self:K`` the extra time of
  the prefix pass that yields them (``PrefixStore.fill_with_states`` minus ``fill``), which is what train_atv runs;
  and at evaluation, what a cached evaluation that already holds the prompt bodies adds for them (the last token
  through blocks 0..K, :mod:`workbench.core.shared_states`).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.atv.examples import tokenize_pair, training_examples
from workbench.atv.fastpath import PrefixStore, collate, fast_pair_losses, head_lengths, prefix_kvs
from workbench.atv.generator import ATVGenerator
from workbench.atv.presets import get_preset
from workbench.atv.training import generator_autocast, make_optimizer
from workbench.core.encoders import load_encoder
from workbench.core.interventions import Injection
from workbench.core.kv_cache import BodyCache
from workbench.core.shared_states import sharing_bodies


def median_seconds(fn, repeats: int, between=None) -> float:
    """Median time of `fn`; `between()` runs untimed before each call."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if between is not None:
            between()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def report(name: str, old: float, new: float, unit: str = "s") -> None:
    print(f"{name}: {old:.4f} {unit} -> {new:.4f} {unit}  ({old / new:.1f}x)", flush=True)


def old_and_new(lm, generator, examples, seqs, heads, bodies, config, repeats: int) -> None:
    """The fast path's components, the old way vs train_atv's."""
    n = len(seqs)
    one_by_one = median_seconds(lambda: [prefix_kvs(lm, [s]) for s in seqs], 1) / n
    batched = median_seconds(lambda: PrefixStore().fill(lm, list(range(n)), seqs, heads), 1) / n
    shared = median_seconds(lambda: PrefixStore().fill(lm, list(range(n)), seqs, heads, bodies=bodies), 1) / n
    report(f"prefix pass per example ({n} prompts): batch 1 -> batched, template heads", one_by_one, batched)
    report("prefix pass per example: template heads -> + item bodies (an item's templates share its input)",
           batched, shared)

    batch = list(range(0, n, max(1, n // 24)))[:24]
    kvs = [prefix_kvs(lm, [seqs[i]])[0] for i in batch]
    texts = [examples[i].generator_text for i in batch]
    generator.train()
    enc = generator.encoder

    def generator_step() -> None:  # what runs between two collates in training: allocations of other sizes
        generator(texts).sum().backward()
        generator.zero_grad(set_to_none=True)

    store = PrefixStore(0)
    report("collate 24 prefixes (a generator step between calls): fresh buffer -> workspace",
           median_seconds(lambda: collate(lm, kvs), repeats, generator_step),
           median_seconds(lambda: collate(lm, kvs, store.workspace), repeats, generator_step))

    def padded(precision: str) -> None:
        with generator_autocast(precision, lm.device):
            states = enc(**enc.tokenize(texts))
            generator(states).float().sum().backward()

    def bucketed(precision: str) -> None:
        with generator_autocast(precision, lm.device):
            generator(texts).float().sum().backward()

    fp32_padded = median_seconds(lambda: padded("float32"), repeats)
    fp32_bucketed = median_seconds(lambda: bucketed("float32"), repeats)
    report("generator fwd+bwd, 24 texts: one padded batch -> length buckets", fp32_padded, fp32_bucketed)
    report("generator fwd+bwd, 24 texts, length buckets: float32 -> bf16 autocast", fp32_bucketed,
           median_seconds(lambda: bucketed("bfloat16"), repeats))

    logits = torch.randn(24, 1, lm.hf.config.vocab_size, requires_grad=True)
    labels = torch.randint(0, logits.shape[-1], (24, 1))
    report("answer cross-entropy fwd+bwd, [24, 1, vocab] logits: class dim of [B, V, K] -> rows of [B*K, V]",
           median_seconds(lambda: F.cross_entropy(logits.transpose(1, 2), labels).backward(), repeats),
           median_seconds(lambda: F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                  labels.reshape(-1)).backward(), repeats))

    params = [p for p in generator.parameters() if p.requires_grad]
    default = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    fused = make_optimizer(params, config)
    report(f"Adam step over {sum(p.numel() for p in params) / 1e6:.1f}M weights: default -> fused",
           median_seconds(default.step, repeats), median_seconds(fused.step, repeats))


def source_row(lm, name: str, examples, pairs, heads, bodies, config, repeats: int) -> dict:
    """One training step's components (seconds, medians) and the per-query cost of states computed once."""
    encoder = load_encoder(name, seed=config.seed, lm=lm)
    generator = ATVGenerator(encoder, lm)
    trained = name.startswith("scratch")  # MiniLM is read frozen (cpu-demo); self:K has no weights to train
    encoder.requires_grad_(trained)
    generator.train(trained)
    texts = [ex.generator_text for ex in examples]
    prefixes = [p[:-1] for p, _ in pairs]
    keys = list(range(len(pairs)))
    n = len(texts)
    row = {"source": name}
    passes = max(1, min(repeats, 3))  # a prefix pass over every example is long: at most 3, interleaved
    with torch.no_grad():
        own = median_seconds(lambda: torch.cat([encoder.encode(texts[i: i + 24]) for i in range(0, n, 24)]), passes)
        fills, shared = [], []
        for _ in range(passes):
            t0 = time.perf_counter()
            PrefixStore().fill(lm, keys, prefixes, heads, bodies=bodies)
            fills.append(time.perf_counter() - t0)
            if name.startswith("self:"):
                t0 = time.perf_counter()
                PrefixStore().fill_with_states(lm, keys, [p for p, _ in pairs], encoder.block, heads,
                                               bodies=bodies)
                shared.append(time.perf_counter() - t0)
        row["prefix pass / example (ms)"] = 1e3 * statistics.median(fills) / n
        row["states, own pass / query (ms)"] = 1e3 * own / n
        if shared:  # what train_atv runs for self:K: the states come with the prefix pass
            row["states, from the prefix pass / query (ms)"] = 1e3 * (statistics.median(shared)
                                                                     - statistics.median(fills)) / n
            cache = BodyCache(budget_mb=8192)

            def at_evaluation() -> None:  # what cached evaluation runs: its bodies (kept after the first call) + K
                with sharing_bodies(lm, texts, cache, share_tails=True, batch_size=24):
                    encoder.encode(texts)

            at_evaluation()
            row["states at evaluation, from its bodies / query (ms)"] = 1e3 * median_seconds(at_evaluation,
                                                                                           passes) / n
        states = torch.cat([encoder.encode(texts[i: i + 24]) for i in range(0, n, 24)])
    store = PrefixStore()
    store.fill(lm, keys, prefixes, heads, bodies=bodies)
    idx = list(range(0, n, max(1, n // 24)))[:24]  # one step: 24 examples (8 items x 3 templates)
    optimizer = make_optimizer([p for p in generator.parameters() if p.requires_grad], config)
    held: dict = {}

    def forward_backward_generator() -> None:
        vectors = generator([texts[i] for i in idx]) if trained else generator(states[idx])
        vectors.backward(held.get("grad", torch.ones_like(vectors)))

    def llm_loss() -> None:
        v = torch.randn(len(idx), lm.num_layers, lm.hidden_size, requires_grad=True)
        losses, _ = fast_pair_losses(lm, [pairs[i] for i in idx], Injection(v, config.scale), store,
                                     [keys[i] for i in idx], [heads[i] for i in idx])
        losses.mean().backward()
        held["grad"] = v.grad

    row["generator fwd+bwd / step (s)"] = median_seconds(forward_backward_generator, repeats)
    row["LLM loss fwd+bwd / step (s)"] = median_seconds(llm_loss, repeats)
    row["Adam / step (s)"] = median_seconds(optimizer.step, repeats)
    row["step (s)"] = sum(row[k] for k in ("generator fwd+bwd / step (s)", "LLM loss fwd+bwd / step (s)",
                                           "Adam / step (s)"))
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=8, help="items per task (x 3 templates)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sources", default="minilm-l6,scratch:4x256,self:16",
                        help="generator sources for the per-source table (comma-separated; empty: none)")
    parser.add_argument("--skip-old-new", action="store_true", help="only the per-source table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = get_preset("cpu-demo")
    config = dataclasses.replace(preset.config, n_train=args.items, valid_items=0, generator_precision="float32")
    lm, generator, tasks = preset.load(config)
    examples = training_examples(tasks, args.items, config.seed, config.prefix, config.generator_input)
    pairs = [tokenize_pair(lm, ex.prompt(lm), ex.target) for ex in examples]
    heads = head_lengths([p[:-1] for p, _ in pairs], [(ex.task, ex.template) for ex in examples])
    bodies = head_lengths([p[:-1] for p, _ in pairs], [ex.group for ex in examples])
    print(f"{lm.name}, {len(examples)} examples ({args.items} items x 3 templates x {len(tasks)} tasks), "
          f"{args.threads} threads", flush=True)
    if not args.skip_old_new:
        old_and_new(lm, generator, examples, [p[:-1] for p, _ in pairs], heads, bodies, config, args.repeats)
    rows = [source_row(lm, s, examples, pairs, heads, bodies, config, args.repeats)
            for s in args.sources.split(",") if s]
    if rows:
        with pd.option_context("display.width", 250, "display.max_columns", 20,
                               "display.float_format", "{:.3f}".format):
            print(pd.DataFrame(rows).set_index("source").to_string(na_rep="-"))


if __name__ == "__main__":
    main()
