"""`python -m workbench demo`: the main job on the embedded default models."""

from __future__ import annotations

import argparse

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--encoder", default="minilm-l6")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    import workbench as wb

    lm = wb.load_model(args.model)
    encoder = wb.load_encoder(args.encoder)
    print(f"large model: {lm.name} (L={lm.num_layers}, d={lm.hidden_size}); small model: {encoder.name} (d_s={encoder.dim})")
    prompt = lm.render("The movie was a delight from start to finish.\nQuestion: Is this sentence positive or negative? Answer positive or negative.\nA:")
    torch.manual_seed(args.seed)
    with torch.no_grad():
        v = encoder.encode([prompt])
        expand = torch.nn.Linear(encoder.dim, lm.num_layers * lm.hidden_size)
        vectors = expand(v).view(1, lm.num_layers, lm.hidden_size)
    for scale in (0.0, 1.0, 5.0):
        answer = wb.generate(lm, [prompt], wb.Injection(vectors, scale=scale), max_new_tokens=12)[0]
        print(f"lambda={scale:<4} -> {answer!r}")
    return 0
