"""Tiny random-init models and a word-level tokenizer built in code, for tests, CI and quick experiments.

No download is involved: ``tiny_model("llama")`` gives a frozen :class:`~workbench.core.models.LanguageModel` of a few
thousand parameters whose tokenizer knows a small vocabulary plus every word of the texts you pass.
"""

from __future__ import annotations

import re
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedTokenizerFast,
)

from workbench.core.architectures import ARCHITECTURES
from workbench.core.models import LanguageModel, wrap_model
from workbench.core.remote import RemoteTarget, RequestRecorder, model_key

BASE_WORDS = (
    "A B C D E F G H I J True False Yes No positive negative Neither Answer answer The is Question Options "
    "Q : . , ? ! ' the a of to and in sentence premise hypothesis correct wrong context question"
).split()
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]

#: model_type -> config overrides of its tiny test model (from workbench.core.architectures).
TINY_CONFIGS: dict[str, dict] = {t: a.tiny for t, a in ARCHITECTURES.items() if a.tiny is not None}


def words_of(texts: Iterable[str]) -> list[str]:
    return sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t)})


def tiny_tokenizer(texts: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over BASE_WORDS and the words of `texts`; `<s>` is BOS, `</s>` EOS, `<pad>` PAD."""
    vocab = {w: i for i, w in enumerate(dict.fromkeys([*SPECIALS, *BASE_WORDS, *words_of(texts)]))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>")
    tok.padding_side = "left"
    return tok


def tiny_model(
    arch: str = "llama",
    texts: Iterable[str] = (),
    seed: int = 0,
    name: str | None = None,
    **overrides,
) -> LanguageModel:
    """A frozen float32 random-init causal LM of architecture `arch` (a key of TINY_CONFIGS)."""
    if arch not in TINY_CONFIGS:
        raise ValueError(f"unknown tiny architecture {arch!r}; use one of {sorted(TINY_CONFIGS)}")
    tok = tiny_tokenizer(texts)
    kwargs = {**TINY_CONFIGS[arch], **overrides}
    size_key = "n_positions" if arch == "gpt2" else "max_position_embeddings"
    kwargs.setdefault(size_key, 512)
    cfg = AutoConfig.for_model(
        arch, vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=False, **kwargs,
    )
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return wrap_model(hf, tok, name=name or f"tiny-{arch}", source=f"tiny:{arch}", chat=False)


def as_remote(lm: LanguageModel, execute: bool = True) -> tuple[LanguageModel, RequestRecorder]:
    """(`lm` as a remote model, the recorder of its requests): every supported forward pass is built and serialized
    as the NDIF request nnsight would send and kept in ``recorder.sent`` instead of posted; ``execute=True`` also
    runs each payload here, as an NDIF server would, so results come back. Tests the remote path with no network."""
    from nnsight.modeling.transformers import TransformersModel

    envoy = TransformersModel(lm.hf, tokenizer=lm.tokenizer, task="text-generation")
    target = RemoteTarget(envoy, model_key(lm.name), host="(not sent)")
    recorder = RequestRecorder(target, execute=execute)
    target.backend_factory = lambda _: recorder
    return wrap_model(lm.hf, lm.tokenizer, name=lm.name, source=f"ndif:{lm.name}", chat=lm.chat,
                      remote=target), recorder
