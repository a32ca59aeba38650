"""Does ATV learn the task, not only the answer format? Train on glue_sst2 with a preset's settings, then compare.

    .venv/bin/python benchmarks/atv_learns.py [--preset cpu-demo] [--n-test 30] [--threads 2]

Trains a generator on glue_sst2 alone with the preset's models and TrainConfig (its tasks replaced by glue_sst2),
evaluates zero-shot and ATV on the same ``--n-test`` test items x 9 variants (seed 42) and prints:

* both methods' strict (official first token), loose and label-restricted (argmax over the label tokens) accuracy;
* the last train / valid loss against ln(number of labels) -- a loss at ln 2 means the two label words share the
  mass: format learned, not which label;
* where the query signal goes (:mod:`workbench.atv.diagnostics`): the generated vector split into bias, mean-query
  and query-specific parts, the spread of the vectors between queries, the edit ``λ v`` against the hidden-state
  norm at the edited token, and a logistic-regression probe on the small model's own (frozen) states of the same
  texts -- what a linear read-out of the generator's input gets;
* last, ``label_gain: <points>`` = ATV - zero-shot label-restricted accuracy, with its paired item-level bootstrap
  interval (each item's 9 variants resampled together).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import workbench as wb  # noqa: E402
from workbench.atv import diagnostics as dg  # noqa: E402
from workbench.atv.examples import training_examples  # noqa: E402
from workbench.atv.presets import get_preset  # noqa: E402
from workbench.eval.evaluate import sample_items  # noqa: E402
from workbench.tasks.prompts import build_text, variants  # noqa: E402

TASK = "glue_sst2"


def encode_all(generator: wb.ATVGenerator, texts: list[str], batch: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([generator.encoder.encode(texts[i: i + batch]).float() for i in range(0, len(texts), batch)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu-demo")
    parser.add_argument("--n-test", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the machine may be shared)")
    parser.add_argument("--epochs", type=int, help="override the preset's epochs")
    parser.add_argument("--n-train", type=int, help="override the preset's items per task")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch size")
    parser.add_argument("--lr", type=float, help="override the preset's learning rate")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    preset = dataclasses.replace(get_preset(args.preset), tasks=(TASK,))
    changes = {k: v for k, v in (("epochs", args.epochs), ("n_train", args.n_train),
                                         ("batch_size", args.batch_size), ("lr", args.lr)) if v is not None}
    config = dataclasses.replace(preset.config, **changes).validate()
    lm, generator, tasks = preset.load(config)
    task = tasks[0]
    print(f"preset {preset.name}: {lm.name} + {generator.encoder.name} (pooling {generator.encoder.pooling}, "
          f"input_norm {generator.input_norm}) on {TASK}; epochs {config.epochs}, n_train {config.n_train}, "
          f"batch {config.batch_size}, lr {config.lr}, λ {config.scale}, layers {config.layers}, encoder "
          f"{config.encoder_train_mode}, generator {config.generator_precision}; torch threads {args.threads}",
          flush=True)

    start = time.perf_counter()
    history = wb.train_atv(lm, generator, tasks, config, progress=False)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    evals = {name: wb.evaluate(lm, method, [TASK], n_test=args.n_test, seeds=[42], progress=False)
             for name, method in (("zero-shot", wb.methods.ZeroShot()), ("ATV", wb.methods.ATV(generator)))}
    eval_seconds = time.perf_counter() - start

    print(f"\ntrain {train_seconds:.0f} s, evaluation of both {eval_seconds:.0f} s")
    print(f"{'method':<10} {'strict':>7} {'loose':>7} {'label':>7}   (% of {args.n_test} items x 9 variants)")
    for name, df in evals.items():
        print(f"{name:<10} {100 * df.correct.mean():7.1f} {100 * df.correct_loose.mean():7.1f} "
              f"{100 * df.label_correct.mean():7.1f}")
    chance = math.log(len(task.labels))
    last = history.iloc[-1]
    print(f"\nloss after {int(last.epoch)} epochs: train {last.train_loss:.3f}, valid {last.valid_loss:.3f}; "
          f"ln({len(task.labels)} labels) = {chance:.3f}; train curve "
          + " ".join(f"{x:.3f}" for x in history.train_loss))

    # where the query signal goes, on the evaluated texts (all 9 variants of the first 10 test items)
    items = [task.test[i] for i in sample_items(task, args.n_test, 42)]
    texts = [build_text(task.templates[t], it.input, p) for it in items[:10] for t, p in variants()]
    generator.eval()
    with torch.no_grad():
        vectors = generator(texts).float()
    parts = dg.projection_parts(generator, encode_all(generator, texts))
    spread = dg.vector_spread(vectors)
    ratios = dg.edit_ratios(lm, vectors, config.scale, [lm.render(t) for t in texts], config.layers)
    print(f"\nvector ‖v‖ {parts['vector']:.3g} = bias {parts['bias']:.3g} + mean query {parts['mean_query']:.3g} "
          f"+ query-specific {parts['query_specific']:.3g} (query share {100 * parts['query_share']:.2f} %)")
    print(f"between-query spread / mean norm, mean over layers: {spread.spread_ratio.mean():.4f}")
    edited = ratios[ratios.edit_ratio > 0]
    print(f"edit ‖λv_l‖/‖h_l‖ at the edited token: mean {edited.edit_ratio.mean():.4f} "
          f"(max {edited.edit_ratio.max():.4f}); "
          f"query-specific part {edited.query_ratio.mean():.2e}; cumulative at the last layer "
          f"{ratios.cumulative_ratio.iloc[-1]:.4f}")

    # linear probe on the small model's own states: train texts (training templates) -> test variants
    train = training_examples([task], 300, seed=0, generator_input=config.generator_input)
    probe_test = [(build_text(task.templates[t], it.input, p), it.output) for it in items for t, p in variants()]
    was = generator.encoder.training
    generator.encoder.eval()
    xtr = encode_all(generator, [e.generator_text for e in train])
    xte = encode_all(generator, [t for t, _ in probe_test])
    generator.encoder.train(was)
    probe = dg.probe_accuracy(xtr, [e.target.strip() for e in train], xte, [y for _, y in probe_test])
    print(f"logistic-regression probe on {generator.encoder.name}'s states of the prompts "
          f"({len(train) // 3} train items x 3 templates): {100 * probe:.1f} %")

    gain = dg.paired_bootstrap(evals["ATV"], evals["zero-shot"])
    print(f"\npaired item-level bootstrap (95 %, {gain['n_items']} items x 9 variants): "
          f"[{gain['low']:+.1f}, {gain['high']:+.1f}] points; excludes 0: {gain['low'] > 0 or gain['high'] < 0}")
    print(f"label_gain: {gain['diff']:+.1f}")
    return 0 if np.isfinite(gain["diff"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
