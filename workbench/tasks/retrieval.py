"""Query-embedding similarity: the retriever used by ELICIT and by I2CL's / static TV's unseen-task fallback.

ELICIT's official retriever is a SimCSE-RoBERTa pair classifier trained on 10k prompt pairs; it cannot be downloaded
here. The workbench substitutes the embedded sentence encoder ``minilm-l6`` (all-MiniLM-L6-v2, mean pooling, the
pooling it was trained with): the score of a query against a library entry is the cosine similarity of their
embeddings, in [-1, 1]. :class:`QueryIndex` holds the (normalised) embeddings of keyed texts and answers top-k and
nearest-key queries.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence

import torch

from workbench.core.encoders import Encoder, load_encoder

DEFAULT_RETRIEVER = "minilm-l6"


@functools.lru_cache(maxsize=4)
def retriever_encoder(name: str = DEFAULT_RETRIEVER) -> Encoder:
    """The frozen sentence encoder used for retrieval (loaded once per process, mean pooling, eval mode)."""
    enc = load_encoder(name, pooling="mean")
    enc.eval()
    enc.requires_grad_(False)
    return enc


def embed(texts: Sequence[str], encoder: Encoder | str = DEFAULT_RETRIEVER, batch_size: int = 32) -> torch.Tensor:
    """Unit-norm embeddings ``[N, d]`` (float32, CPU) of `texts`."""
    enc = retriever_encoder(encoder) if isinstance(encoder, str) else encoder
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError("texts must be a non-empty list of strings")
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            out.append(enc.encode(list(texts[start:start + batch_size])).float().cpu())
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


class QueryIndex:
    """Keyed texts (e.g. the queries of ELICIT's library prompts, key = task name) searchable by cosine similarity."""

    def __init__(self, keys: Sequence[Hashable], texts: Sequence[str], encoder: Encoder | str = DEFAULT_RETRIEVER):
        if len(keys) != len(texts) or not texts:
            raise ValueError(f"need as many keys as texts (> 0), got {len(keys)} keys and {len(texts)} texts")
        self.encoder = encoder
        self.keys = list(keys)
        self.texts = list(texts)
        self.embeddings = embed(self.texts, encoder)

    def __len__(self) -> int:
        return len(self.keys)

    def similarities(self, queries: Sequence[str]) -> torch.Tensor:
        """Cosine similarities ``[Q, N]`` of each query with every indexed text."""
        return embed(queries, self.encoder) @ self.embeddings.T

    def top_k(self, queries: Sequence[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, indices), each ``[Q, min(k, N)]``, best first."""
        sims = self.similarities(queries)
        return sims.topk(min(k, len(self)), dim=-1)

    def nearest_keys(self, queries: Sequence[str], allowed: set | None = None) -> list[tuple[Hashable, float]]:
        """For each query, the key of its most similar indexed text (restricted to `allowed` keys) and the score."""
        sims = self.similarities(queries)
        if allowed is not None:
            keep = torch.tensor([k in allowed for k in self.keys])
            if not keep.any():
                raise ValueError(f"none of the keys {sorted(map(str, allowed))} is indexed")
            sims = sims.masked_fill(~keep, float("-inf"))
        best, idx = sims.max(dim=-1)
        return [(self.keys[int(i)], float(s)) for s, i in zip(best, idx)]


def recall_threshold(index: QueryIndex, queries: Sequence[str], query_keys: Sequence[Hashable],
                     recall: float = 0.8) -> float:
    """Score threshold keeping a share `recall` of the positive (same-key) pairs between `queries` and the index.

    ELICIT chooses its retriever threshold from a recall target of 0.8; this is the same rule applied to cosine
    scores: the (1 - recall) quantile of the similarities of held-out queries with same-task library entries.
    """
    if not 0 < recall <= 1:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    sims = index.similarities(queries)
    same = torch.tensor([[qk == k for k in index.keys] for qk in query_keys])
    positives = sims[same]
    if positives.numel() == 0:
        raise ValueError("no query shares a key with the index: cannot calibrate a threshold")
    return float(torch.quantile(positives, 1 - recall))
