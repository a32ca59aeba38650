"""Plain forward vs raw PyTorch hooks vs nnsight injection on the embedded model (batch 8, ~130 tokens).

    .venv/bin/python benchmarks/injection_overhead.py [--repeats 15] [--model smollm2-135m]

Prints the median time of each and, last, the ratio nnsight/hooks (goal <= 1.10). All measured in this one run,
interleaved so that machine noise hits the three alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference_hooks import hooked  # noqa: E402

import workbench as wb  # noqa: E402
from workbench.core.inference import encode  # noqa: E402

SENTENCE = "The committee reviewed the proposal in detail and raised several questions about the budget. "


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = wb.load_model(args.model, chat=False)
    prompts = [(SENTENCE * 10)[: 700 + 7 * i] + "\nA:" for i in range(args.batch)]
    enc = encode(lm, prompts)
    T = enc["input_ids"].shape[1]
    vectors = torch.randn(lm.num_layers, lm.hidden_size)
    inj = wb.Injection(vectors, scale=1e-3)
    keep = torch.tensor([T - 1])
    deltas = {i: 1e-3 * vectors[i] for i in range(lm.num_layers)}

    def plain():
        lm.hf(**enc, logits_to_keep=keep)

    def hooks():
        with hooked(lm.layers, deltas, "last", enc["attention_mask"]):
            lm.hf(**enc, logits_to_keep=keep)

    def nnsight():
        wb.next_token_logits(lm, prompts, inj, batch_size=args.batch)

    runs = {"plain": plain, "hooks": hooks, "nnsight": nnsight}
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    print(f"model={lm.name} batch={args.batch} tokens={T} threads={args.threads} repeats={args.repeats} "
          f"torch={torch.__version__}")
    for name, ts in times.items():
        print(f"{name:8s} median {statistics.median(ts) * 1e3:8.1f} ms   (min {min(ts) * 1e3:.1f} ms)")
    ratio = statistics.median(times["nnsight"]) / statistics.median(times["hooks"])
    print(f"hooks/plain: {statistics.median(times['hooks']) / statistics.median(times['plain']):.3f}")
    print(f"nnsight/hooks: {ratio:.3f}")


if __name__ == "__main__":
    main()
