"""Wall time of cached ``evaluate_many`` on the cpu-demo tasks, to compare two checkouts of the workbench on one
machine (run it from each, alternating: the single-process default must not get slower).

    .venv/bin/python benchmarks/shared_eval_time.py [--n-test 5] [--threads 2] [--label new]

Two zero-shot labels (the second reads every body and tail the first kept) on glue_sst2, bbh_boolean_expressions,
ethics_justice and crows_pairs, ``--n-test`` items x 9 variants, after a one-item warm-up; prints one line:
``<label> wall <s> bodies <s> <body tokens> <bodies computed>`` (from the run's BodyCache statistics).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-test", type=int, default=5, help="test items per task (x 9 variants)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--label", default="this checkout", help="printed first, to tell runs apart")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import workbench as wb
    from workbench.core.kv_cache import BodyCache
    from workbench.eval.evaluate import evaluate_many
    from workbench.methods import ZeroShot

    lm = wb.load_model("smollm2-135m")
    tasks = [wb.load_task(t) for t in ("glue_sst2", "bbh_boolean_expressions", "ethics_justice", "crows_pairs")]
    evaluate_many(lm, {"zero-shot": ZeroShot()}, tasks[:1], n_test=1, progress=False)  # warm-up
    cache = BodyCache()
    start = time.perf_counter()
    evaluate_many(lm, {"zero-shot": ZeroShot(), "zero-shot again": ZeroShot()}, tasks, n_test=args.n_test,
                  progress=False, cache=cache)
    stats = cache.stats()
    print(args.label, "wall", round(time.perf_counter() - start, 2), "bodies", stats["body_seconds"],
          stats["body_tokens_run"], stats["misses"], flush=True)


if __name__ == "__main__":
    main()
