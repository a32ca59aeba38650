"""Training throughput on the cpu-demo preset: the fast path vs the official code's way.

    .venv/bin/python benchmarks/train_speed.py [--items N] [--epochs E] [--official-items 4] [--threads 2]
                                               [--generator-precision float32|bfloat16|float16]

* official: the official code's loop -- one item per optimizer step (torch's default Adam); the generator reads
  each distinct generator text of the item once; each template's sequence alone (batch 1), the whole prompt +
  answer through the LLM with autograd (naive path, positions "last"); template losses averaged, one backward.
* fast: ``wb.train_atv`` on the preset (its items per task, batch size, epochs), i.e. the prefix-cached fast path;
  the figure includes computing the prefix caches before the first epoch (also printed without them).

The official loop is measured before and after the fast run and the two rates averaged. Both use the same
models, data and generator precision (the preset's unless ``--generator-precision`` is given;
under "bfloat16" the generator's forward runs under autocast in both).

Prints examples/s of both (examples = item x template sequences), and last ``speedup: <fast/official>x``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.atv.examples import Example, tokenize_pair, training_examples
from workbench.atv.loss import pair_losses
from workbench.atv.presets import get_preset
from workbench.atv.training import GENERATOR_PRECISIONS, generator_autocast, group_items, train_atv
from workbench.core.interventions import Injection


def official_rate(lm, generator, examples: list[Example], config) -> float:
    """Examples/s of the official training loop: per item, the generator reads each distinct generator text once
    (batch 1), each template's whole prompt + answer runs through the LLM with autograd (batch 1, naive path,
    positions "last"), the template losses are averaged, one backward, one step of torch's default Adam."""
    optimizer = torch.optim.Adam([p for p in generator.parameters() if p.requires_grad], lr=config.lr,
                                 weight_decay=config.weight_decay)
    generator.train()
    groups = group_items(examples)
    for n, group in enumerate([groups[0], *groups]):  # the first item again, untimed, to warm up
        if n == 1:
            start = time.perf_counter()
        vectors = {}
        for i in group:
            text = examples[i].generator_text
            if text not in vectors:
                with generator_autocast(config.generator_precision, lm.device):
                    vectors[text] = generator([text]).to(lm.dtype)
        loss = sum(pair_losses(lm, [tokenize_pair(lm, examples[i].prompt(lm), examples[i].target)],
                               Injection(vectors[examples[i].generator_text], config.scale))[0].mean() for i in group)
        (loss / len(group)).backward()
        optimizer.step()
        optimizer.zero_grad()
    return len(examples) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="cpu-demo")
    parser.add_argument("--items", type=int, help="train items per task for the fast run (default: the preset's)")
    parser.add_argument("--epochs", type=int, help="epochs of the fast run (default: the preset's)")
    parser.add_argument("--official-items", type=int, default=4, help="items per task for the official-way run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--generator-precision", choices=GENERATOR_PRECISIONS, help="default: the preset's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    config = dataclasses.replace(preset.config, n_train=args.items or preset.config.n_train, valid_items=0,
                                 epochs=args.epochs or preset.config.epochs,
                                 generator_precision=args.generator_precision or preset.config.generator_precision)
    lm, generator, tasks = preset.load(config)
    print(f"{preset.name}: {lm.name} + {generator.encoder.name}, tasks {', '.join(t.name for t in tasks)}, "
          f"{config.n_train} items per task, batch {config.batch_size} items, {config.epochs} epochs, "
          f"{config.generator_precision} generator, {args.threads} threads")

    examples = training_examples(tasks, args.official_items, config.seed + 1, config.prefix, config.generator_input)
    initial = copy.deepcopy(generator.state_dict())
    before = official_rate(lm, generator, examples, config)
    generator.load_state_dict(initial)  # the fast run starts from the same weights

    df = train_atv(lm, generator, tasks, config, progress=False)
    generator.load_state_dict(initial)
    after = official_rate(lm, generator, examples, config)  # again, so that drift in machine speed averages out
    official = (before + after) / 2
    print(f"official way (batch 1, whole sequence): {official:.2f} examples/s over {len(examples)} examples "
          f"(measured before and after the fast run: {before:.2f}, {after:.2f})")
    n = len(training_examples(tasks, config.n_train, config.seed, config.prefix, config.generator_input))
    prefix_s = df.attrs["prefix_cache"]["seconds"]
    fast = n * len(df) / (prefix_s + df.seconds.sum())
    steady = n * len(df) / df.seconds.sum()
    print(f"fast path: {fast:.2f} examples/s over {len(df)} epochs of {n} examples, prefix caches included "
          f"({prefix_s:.1f} s); with cached prefixes: {steady:.2f} examples/s; per-epoch s: "
          f"{[round(s, 1) for s in df.seconds]}")
    print(f"speedup: {fast / official:.1f}x")


if __name__ == "__main__":
    main()
