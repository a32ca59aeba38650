"""The large model in float32 vs bfloat16 on this CPU: forward time, logit agreement, small injections.

    .venv/bin/python benchmarks/dtype_speed.py [--model smollm2-135m] [--task arc_challenge] [--n 32] [--repeats 3]
                                               [--threads 2]

Loads the model in both dtypes and, interleaved per repeat, times ``next_token_logits`` on the same `--n` chat prompts
of `--task` (template 0, prefix "A:", batch 8). Then, per dtype, injects at the last token a random vector as long as
the hidden state it is added to (layer by layer) at λ = 1e-3 and 0.05 (the paper's and the cpu presets' scales) and
reports how much the logits move: an injection that bf16 rounds away moves them by ~0 or by bf16's noise. Prints the
seconds of every repeat, the max |logit difference| bf16 vs float32 with the argmax agreement, and, last,
``speedup: <ratio>x`` = float32 time over bf16 time (medians).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import workbench as wb
from workbench.core.inference import next_token_logits
from workbench.core.interventions import Injection
from workbench.eval.evaluate import variant_texts

SCALES = (1e-3, 0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="arc_challenge")
    parser.add_argument("--n", type=int, default=32, help="prompts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.n < 1 or args.repeats < 1:
        parser.error(f"--n {args.n} and --repeats {args.repeats} must be >= 1")
    torch.set_num_threads(args.threads)
    task = wb.load_task(args.task)
    models = {dtype: wb.load_model(args.model, dtype=dtype) for dtype in ("float32", "bfloat16")}
    texts = variant_texts(task, task.test[:args.n], 0, "A:")
    prompts = [models["float32"].render(t) for t in texts]
    print(f"{args.model}, {args.n} prompts of {args.task} (chat), batch 8, {args.threads} threads")

    seconds: dict[str, list[float]] = {dtype: [] for dtype in models}
    logits: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for dtype, lm in models.items():
            start = time.perf_counter()
            logits[dtype] = next_token_logits(lm, prompts, batch_size=8).float()
            seconds[dtype].append(time.perf_counter() - start)
    for dtype, s in seconds.items():
        print(f"  {dtype:9s} seconds per repeat: {', '.join(f'{x:.2f}' for x in s)}")
    diff = (logits["bfloat16"] - logits["float32"]).abs().max().item()
    agree = (logits["bfloat16"].argmax(-1) == logits["float32"].argmax(-1)).float().mean().item()
    print(f"max |logit difference| bf16 vs float32: {diff:.3f}; same argmax on {agree:.0%} of the prompts")

    lm32 = models["float32"]
    torch.manual_seed(0)
    direction = torch.randn(lm32.num_layers, lm32.hidden_size)
    with torch.no_grad():  # each layer's output norm at the last token of the first prompt
        ids = lm32.tokenizer(prompts[0], return_tensors="pt")
        states = lm32.hf(**ids, output_hidden_states=True).hidden_states[1:]
    norms = torch.stack([h[0, -1].norm() for h in states])[:, None]
    vectors = direction / direction.norm(dim=-1, keepdim=True) * norms  # as long as the state it is added to
    for scale in SCALES:
        moved = {}
        for dtype, lm in models.items():
            edited = next_token_logits(lm, prompts[:8], injection=Injection(vectors, scale=scale), batch_size=8)
            moved[dtype] = (edited.float() - logits[dtype][:8]).abs().max().item()
        print(f"  λ = {scale:g}: an injection moves the logits by max {moved['float32']:.2e} in float32, "
              f"{moved['bfloat16']:.2e} in bf16")
    ratio = statistics.median(seconds["float32"]) / statistics.median(seconds["bfloat16"])
    print(f"speedup: {ratio:.2f}x")


if __name__ == "__main__":
    main()
