"""Where the fast path's speed comes from: each training component, the old way vs the way train_atv does it.

    .venv/bin/python benchmarks/train_components.py [--items 8] [--repeats 5] [--threads 2]

On the cpu-demo preset's models and tasks, medians over `--repeats` (seconds):

* prefix pass per example: batch 1 (one forward per prompt) vs ``PrefixStore`` (length-bucketed batches, shared head)
* collate of 24 prefixes into one cache, with a generator step between calls as in training: a fresh buffer
  (page faults) vs the store's reusable workspace
* generator forward + backward on 24 texts: one padded batch vs length buckets, float32 and bf16 autocast
* one optimizer step over the generator's weights: torch's default Adam vs the fused Adam ``train_atv`` uses

Each line ends with the ratio old / new measured in this run.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.atv.examples import tokenize_pair, training_examples
from workbench.atv.fastpath import PrefixStore, collate, head_lengths, prefix_kvs
from workbench.atv.presets import get_preset
from workbench.atv.training import generator_autocast, make_optimizer


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
    print(f"{name}: {old:.4f} {unit} -> {new:.4f} {unit}  ({old / new:.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=8, help="items per task (x 3 templates) for the prefix pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = get_preset("cpu-demo")
    config = dataclasses.replace(preset.config, n_train=args.items, valid_items=0)
    lm, generator, tasks = preset.load(config)
    examples = training_examples(tasks, args.items, config.seed, config.prefix, config.generator_input)
    seqs = [tokenize_pair(lm, ex.prompt(lm), ex.target)[0][:-1] for ex in examples]
    heads = head_lengths(seqs, [(ex.task, ex.template) for ex in examples])
    n = len(seqs)

    one_by_one = median_seconds(lambda: [prefix_kvs(lm, [s]) for s in seqs], 1) / n
    batched = median_seconds(lambda: PrefixStore(0).prefixes(lm, list(range(n)), seqs, heads), 1) / n
    report(f"prefix pass per example ({n} prompts)", one_by_one, batched)

    batch = list(range(0, n, max(1, n // 24)))[:24]
    kvs, lengths = [prefix_kvs(lm, [seqs[i]])[0] for i in batch], [len(seqs[i]) for i in batch]
    texts = [examples[i].generator_text for i in batch]
    generator.train()
    enc = generator.encoder

    def generator_step() -> None:  # what runs between two collates in training: allocations of other sizes
        generator(texts).sum().backward()
        generator.zero_grad(set_to_none=True)

    store = PrefixStore(0)
    report("collate 24 prefixes (a generator step between calls): fresh buffer -> workspace",
           median_seconds(lambda: collate(lm, kvs, lengths), args.repeats, generator_step),
           median_seconds(lambda: collate(lm, kvs, lengths, store), args.repeats, generator_step))

    def padded(precision: str) -> None:
        with generator_autocast(precision, lm.device):
            states = enc(**enc.tokenize(texts))
            generator(states).float().sum().backward()

    def bucketed(precision: str) -> None:
        with generator_autocast(precision, lm.device):
            generator(texts).float().sum().backward()

    fp32_padded = median_seconds(lambda: padded("float32"), args.repeats)
    fp32_bucketed = median_seconds(lambda: bucketed("float32"), args.repeats)
    report("generator fwd+bwd, 24 texts: one padded batch -> length buckets", fp32_padded, fp32_bucketed)
    report("generator fwd+bwd, 24 texts, length buckets: float32 -> bf16 autocast", fp32_bucketed,
           median_seconds(lambda: bucketed("bfloat16"), args.repeats))

    params = [p for p in generator.parameters() if p.requires_grad]
    default = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    fused = make_optimizer(params, config)
    report(f"Adam step over {sum(p.numel() for p in params) / 1e6:.1f}M weights: default -> fused",
           median_seconds(default.step, args.repeats), median_seconds(fused.step, args.repeats))


if __name__ == "__main__":
    main()
