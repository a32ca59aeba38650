"""Training throughput on the cpu-demo preset: the fast path vs the official code's way.

    .venv/bin/python benchmarks/train_speed.py [--items 8] [--epochs 3] [--official-items 2] [--threads 2]

* official: one item per optimizer step (its 3 templates), each sequence alone (batch 1), the whole prompt +
  answer through the LLM with autograd (naive path, positions "last"), generator forward/backward per sequence.
* fast: ``wb.train_atv`` with the preset's batch size and the prefix-cached fast path, over `--epochs` epochs; the
  figure includes computing the prefixes in the first epoch (``steady`` = later epochs only).

Prints examples/s of both (examples = item x template sequences), and last ``speedup: <fast/official>x``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.examples import Example, pair_losses, tokenize_pair, training_examples
from workbench.injection import Injection
from workbench.training import group_items, train_atv
from workbench.training_cli import get_preset


def official_rate(lm, generator, examples: list[Example], config) -> float:
    """Examples/s of batch-1 whole-sequence steps (one optimizer step per item, its templates accumulated)."""
    optimizer = torch.optim.Adam([p for p in generator.parameters() if p.requires_grad], lr=config.lr,
                                 weight_decay=config.weight_decay)
    generator.train()
    start = time.perf_counter()
    for group in group_items(examples):
        for i in group:
            ex = examples[i]
            vectors = generator([ex.generator_text])
            losses, _ = pair_losses(lm, [tokenize_pair(lm, ex.prompt(lm), ex.target)], Injection(vectors, config.scale))
            (losses.mean() / len(group)).backward()
        optimizer.step()
        optimizer.zero_grad()
    return len(examples) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="cpu-demo")
    parser.add_argument("--items", type=int, default=8, help="train items per task for the fast run")
    parser.add_argument("--epochs", type=int, help="epochs of the fast run (default: the preset's)")
    parser.add_argument("--official-items", type=int, default=2, help="items per task for the official-way run")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    config = dataclasses.replace(preset.config, n_train=args.items, valid_items=0,
                                 epochs=args.epochs or preset.config.epochs)
    lm, generator, tasks = preset.load(config)
    print(f"{preset.name}: {lm.name} + {generator.encoder.name}, tasks {', '.join(t.name for t in tasks)}, "
          f"batch {config.batch_size} items, {args.threads} threads")

    examples = training_examples(tasks, args.official_items, config.seed + 1, config.prefix, config.generator_input)
    official = official_rate(lm, generator, examples, config)
    print(f"official way (batch 1, whole sequence): {official:.2f} examples/s over {len(examples)} examples")

    df = train_atv(lm, generator, tasks, config, progress=False)
    n = len(training_examples(tasks, config.n_train, config.seed, config.prefix, config.generator_input))
    fast = n * len(df) / df.seconds.sum()
    steady = n * (len(df) - 1) / df.seconds.iloc[1:].sum() if len(df) > 1 else float("nan")
    print(f"fast path: {fast:.2f} examples/s over {len(df)} epochs of {n} examples (incl. prefixes); "
          f"steady (cached prefixes): {steady:.2f} examples/s; per-epoch s: {[round(s, 1) for s in df.seconds]}")
    print(f"speedup: {fast / official:.1f}x")


if __name__ == "__main__":
    main()
