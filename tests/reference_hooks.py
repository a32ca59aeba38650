"""A plain PyTorch forward-hook implementation of the injection, independent of nnsight (test reference)."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def hooked(layers, deltas: dict[int, torch.Tensor], positions: str, attention_mask: torch.Tensor):
    """Add deltas[l] ([d] or [B, d]) to the output of block l at the last column or all real positions."""

    def make(layer):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            delta = deltas[layer]
            delta = delta[:, None, :] if delta.dim() == 2 else delta[None, None, :]
            edited = hidden.clone()
            if positions == "last":
                edited[:, -1:, :] = edited[:, -1:, :] + delta
            else:
                edited = edited + attention_mask[..., None].to(hidden.dtype) * delta
            return (edited, *output[1:]) if isinstance(output, tuple) else edited

        return hook

    handles = [layers[i].register_forward_hook(make(i)) for i in deltas]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def hook_logits(lm, prompts, vectors, scale, layer_ids, positions="last"):
    """Last-position logits with the injection done by plain hooks on the HF model."""
    from workbench.core.inference import encode

    enc = encode(lm, prompts)
    deltas = {i: scale * (vectors[:, i] if vectors.dim() == 3 else vectors[i]) for i in layer_ids}
    with hooked(lm.layers, deltas, positions, enc["attention_mask"]):
        return lm.hf(**enc).logits[:, -1]
