"""Shared-prefix evaluation vs the uncached protocol: the standard line-up on the cpu-demo tasks, same items, one run.

    .venv/bin/python benchmarks/eval_speed.py [--n-test 5] [--threads 2] [--generator DIR] [--fit-tasks 4]
                                              [--methods zero-shot,static-tv,elicit,atv,lora]

Fits the cpu-demo line-up (zero-shot, 4-shot, BM25 4-shot, static TV, ELICIT, I2CL, LoRA, ATV) on the cpu-demo
preset's tasks, then evaluates every method on the same test items (all 9 variants) three ways, interleaved per method:
``cache=False`` (every variant a whole forward pass), ``cache=True`` (each method alone: bodies shared across its 3
answer prefixes) and, for the last-token methods together, ``evaluate_many`` (bodies shared across methods too).
Prints, per method, the seconds and the ratio; the max |logit difference| between the cached and the uncached path on
the first items of every task (and whether every argmax agrees); and, last, ``speedup: <ratio>x`` = uncached time of
the last-token methods (zero-shot, static TV, ELICIT, ATV) over their ``evaluate_many`` time. ATV uses `--generator`
(a trained one) or a freshly initialised generator: its cost does not depend on training.
"""

from __future__ import annotations

import argparse
import time

import torch

import workbench as wb
from workbench.core.inference import body_lengths, cached_next_token_logits, next_token_logits, shares_bodies
from workbench.core.kv_cache import BodyCache
from workbench.eval.compare import standard_methods
from workbench.eval.evaluate import TASK_CACHE_MB, evaluate_many, variant_texts
from workbench.methods.names import display_label
from workbench.tasks.prompts import variants

LAST_TOKEN = ("zero-shot", "static-tv", "elicit", "atv")


def max_logit_difference(lm, method, tasks, n_items: int) -> tuple[float, bool]:
    """Max |cached - uncached| over all 9 variants of the first `n_items` test items of every task, and whether every
    argmax agrees (inside the method's active context, as the evaluator runs it)."""
    worst, same = 0.0, True
    with method.active(lm), torch.no_grad():
        for task in tasks:
            items = list(task.test[:n_items])
            prepared = [method.prepare(lm, task, items, variant_texts(task, items, t, p), 42) for t, p in variants()]
            cacheable = [p for p in prepared if shares_bodies(p.intervention)]
            if not cacheable:
                continue
            _, cuts = body_lengths(lm, [q for p in cacheable for q in p.prompts])
            cache, used = BodyCache(256), 0
            scope = None if method.shares_model_weights else "own"
            for p in cacheable:
                plain = next_token_logits(lm, p.prompts, p.intervention, batch_size=len(items))
                cached = cached_next_token_logits(lm, p.prompts, p.intervention, cache, scope, len(items),
                                                  bodies=cuts[used: used + len(items)])
                used += len(items)
                worst = max(worst, float((plain - cached).abs().max()))
                same &= bool(torch.equal(plain.argmax(-1), cached.argmax(-1)))
    return worst, same


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-test", type=int, default=5, help="test items per task (x 9 variants)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--generator", help="a trained generator folder (default: a fresh one)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated canonical names to time (default: the whole line-up)")
    parser.add_argument("--fit-tasks", type=int, default=4,
                        help="fit the methods on the first N tasks only (evaluation cost does not depend on it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = wb.presets["cpu-demo"]
    lm = wb.load_model(preset.model)
    tasks = [wb.load_task(t) for t in preset.tasks]
    if args.generator:
        generator = wb.ATVGenerator.load(args.generator, lm)
    else:
        torch.manual_seed(0)
        generator = wb.ATVGenerator(wb.load_encoder(preset.encoder), lm)
    line_up = standard_methods(generator, budget="cpu-demo")
    if args.methods:
        wanted = args.methods.split(",")
        line_up = {label: m for label, m in line_up.items() if m.name in wanted}
    print(f"fitting {len(line_up)} methods on {', '.join(t.name for t in tasks)} ...", flush=True)
    for label, method in line_up.items():
        seconds, _ = timed(lambda m=method: m.fit(lm, tasks[: args.fit_tasks]))
        print(f"  {label}: fit {seconds:.0f} s", flush=True)
    kwargs = dict(n_test=args.n_test, seeds=[42], batch_size=8, progress=False)
    rows = []
    print(f"\nevaluating {args.n_test} items x 9 variants x {len(tasks)} tasks per method", flush=True)
    for label, method in line_up.items():
        t_plain, plain = timed(lambda m=method: wb.evaluate(lm, m, tasks, cache=False, **kwargs))
        t_cached, cached = timed(lambda m=method: wb.evaluate(lm, m, tasks, cache=True, **kwargs))
        same = bool((plain["prediction"].values == cached["prediction"].values).all())
        diff, argmax = max_logit_difference(lm, method, tasks, n_items=2)
        rows.append((label, method.name, t_plain, t_cached, diff, argmax and same))
        print(f"  {label:14s} uncached {t_plain:7.1f} s  cached {t_cached:7.1f} s  ratio {t_plain / t_cached:5.2f}x  "
              f"max |dlogit| {diff:.2e}  same predictions {argmax and same}", flush=True)
    last = {display_label(m): m for label, m in line_up.items() if m.name in LAST_TOKEN}
    shared = BodyCache(TASK_CACHE_MB)  # one cache for the whole call, so its counters cover every task
    t_many, _ = timed(lambda: evaluate_many(lm, last, tasks, **{**kwargs, "cache": shared}))
    t_plain_last = sum(r[2] for r in rows if r[1] in LAST_TOKEN)
    t_alone_last = sum(r[3] for r in rows if r[1] in LAST_TOKEN)
    print(f"\nlast-token methods ({', '.join(last)}): uncached {t_plain_last:.1f} s, cached one by one "
          f"{t_alone_last:.1f} s ({t_plain_last / t_alone_last:.2f}x), evaluate_many {t_many:.1f} s")
    print(f"where evaluate_many's time goes: bodies {shared.body_seconds:.1f} s ({shared.body_tokens} tokens, computed "
          f"once: {shared.misses} bodies, reused {shared.hits} times), tails and the rest "
          f"{t_many - shared.body_seconds:.1f} s ({shared.tail_tokens} tail tokens)")
    print(f"max |logit difference| over all methods: {max(r[4] for r in rows):.2e}; "
          f"every argmax and prediction equal: {all(r[5] for r in rows)}")
    print(f"speedup: {t_plain_last / t_many:.2f}x")


if __name__ == "__main__":
    main()
